"""The modality protocol: a modality defined entirely here (frame brightness, from the store's `luma`
array) and registered goes through the config schema, the store check, the dataset, collate and the
model without any other change: a modality is one encoder file plus its registry line."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pytest
import torch
from torch import nn

from _train_stores import SMALL, make_store
from dfew_mm.batch import collate
from dfew_mm.config import load_config, model_config_class
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.models import build_model, resolve_modalities
from dfew_mm.models.encoders import ENCODERS, check_store_fits, registered
from dfew_mm.models.encoders.base import Encoder, Frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclasses.dataclass
class LumaConfig:
    hidden: int = 8


class LumaEncoder(Encoder):
    """Sample: luma (T, 1) float32 mean frame brightness in 0..1, luma_mask (T,) bool. Tokens: (B, T, hidden)."""

    name = "luma"
    Config = LumaConfig
    default = False
    ranges = {"hidden": (1, 64, False)}

    @classmethod
    def store_arrays(cls, cfg: LumaConfig) -> tuple[str, ...]:
        return ("luma",)

    @classmethod
    def cut(cls, cfg: LumaConfig, arrays: Mapping[str, np.ndarray], frames: Frames) -> dict[str, torch.Tensor]:
        if not frames.stored:
            return cls.absent(cfg, frames)
        luma = np.asarray(arrays["luma"][frames.index], dtype=np.float32) / 255  # (T,)
        return {"luma": torch.from_numpy(luma).unsqueeze(-1), "luma_mask": torch.from_numpy(frames.present.copy())}

    @classmethod
    def absent(cls, cfg: LumaConfig, frames: Frames) -> dict[str, torch.Tensor]:
        return {"luma": torch.zeros(frames.data.frames, 1), "luma_mask": frames.none()}

    def __init__(self, cfg: LumaConfig):
        super().__init__(cfg)
        self.proj = nn.Linear(1, cfg.hidden)
        self.output_dim = cfg.hidden

    def encode(self, batch):
        return self.proj(batch["luma"]), batch["luma_mask"], batch["frame_time"]  # (B, T, hidden), (B, T), (B, T)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("luma_store"), clips=10, frames=6, face=32, audio=110)


def test_a_modality_defined_outside_the_library_trains_end_to_end(store):
    dfew, path = store
    data = load_config("tiny", [*SMALL, f"data.store={path}", f"data.dfew_root={dfew}"]).data
    with registered(LumaEncoder):
        assert resolve_modalities("luma,pose") == ["pose", "luma"]  # canonical order: after the built-ins
        model_cfg = model_config_class()(modalities=["pose", "luma"])  # the schema now has a `luma` section
        assert model_cfg.luma == LumaConfig()
        check_store_fits(model_cfg, data.face_size, FeatureStore(path).array_shapes("1"))
        with pytest.raises(StoreError, match="luma modality reads the store's 'luma' array"):
            check_store_fits(model_cfg, data.face_size, ["pose", "pose_mask"])

        dataset = ClipDataset(FeatureStore(path), ["1", "2", "3", "4"], [0, 1, 2, 3], data, model_cfg.modalities,
                              train=True, model_cfg=model_cfg)
        sample = dataset[0]
        assert sample["luma"].shape == (data.frames, 1) and sample["luma_mask"].all()
        assert not sample["video_mask"].any()  # the modalities not asked for come as all-false masks
        batch = collate([dataset[i] for i in range(4)])
        assert batch["luma"].shape == (4, data.frames, 1)

        model = build_model(dataclasses.replace(model_cfg, fusion=dataclasses.replace(model_cfg.fusion, dim=16,
                                                                                      mode="both")))
        out = model(batch, return_unimodal=True)
        assert out.logits.shape == (4, 7) and set(out.members) == {"fusion", "pose", "luma"}
        torch.nn.functional.cross_entropy(out.logits, batch["label"]).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["luma"].parameters())
        with torch.no_grad():
            assert torch.isfinite(model.eval()(batch, modalities=["luma"])).all()  # the modality alone
    assert "luma" not in ENCODERS  # the registry is as it was
    with pytest.raises(ConfigError, match="valid modalities are video, pose, audio, blendshapes$"):
        resolve_modalities("luma")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered already"):
        with registered(type("Again", (LumaEncoder,), {"name": "pose"})):
            pass
    assert ENCODERS["pose"].__name__ == "PoseEncoder"
