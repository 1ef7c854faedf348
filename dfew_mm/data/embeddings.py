"""Embedding cache for frozen-backbone experiments.

`dfew_mm embed` runs the (frozen) video and audio encoders once over every clip of a store and
saves their outputs; training with `data.embedding_cache` then reads those instead of faces and
filterbanks, so only pose, fusion and the head are computed and a full modality sweep over five
folds takes minutes.

    CACHE/meta.json        data and encoder settings the cache was made with (checked on use)
    CACHE/encoders.pt      the encoders' weights, loaded into every model trained from the cache,
                           so its checkpoints also work on raw store batches
    CACHE/clips/<id>.npz   video (T, D_v) float16; audio (T_a, D_a) float16, audio_mask (T_a,),
                           audio_time (T_a,) seconds
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfew_mm.config import ExperimentConfig
from dfew_mm.data.dataset import ClipDataset, batch_to, collate
from dfew_mm.data.store import FeatureStore, atomic_write_bytes
from dfew_mm.errors import ConfigError, StoreError

log = logging.getLogger(__name__)
CACHED_MODALITIES = ("video", "audio")
DATA_KEYS = ("frames", "face_size", "audio_frames")


def _meta(cfg: ExperimentConfig, modalities: Sequence[str]) -> dict:
    meta = {"store": str(Path(cfg.data.store).resolve()), "modalities": list(modalities)}
    meta.update({key: getattr(cfg.data, key) for key in DATA_KEYS})
    for m in modalities:
        encoder = dataclasses.asdict(getattr(cfg.model, m))
        encoder.pop("freeze")
        meta[m] = encoder
    return meta


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{self.path} is not an embedding cache (no meta.json); create it with "
                             "`dfew_mm embed --config CONFIG --store FEATURES --out CACHE`")
        self.meta = json.loads(meta_path.read_text())

    def clip_path(self, clip_id: str) -> Path:
        return self.path / "clips" / f"{clip_id}.npz"

    def check(self, cfg: ExperimentConfig) -> None:
        """The training config must ask for the same frames and frozen encoders the cache holds."""
        wanted = [m for m in cfg.model.modalities if m in CACHED_MODALITIES]
        missing = [m for m in wanted if m not in self.meta["modalities"]]
        if missing:
            raise ConfigError(f"embedding cache {self.path} has no {missing} embeddings; re-run `dfew_mm embed` "
                              f"with those modalities")
        for m in wanted:
            if getattr(cfg.model, m).freeze != "all":
                raise ConfigError(f"training from embedding cache {self.path} needs a frozen {m} encoder: "
                                  f"set model.{m}.freeze=all")
        current = _meta(cfg, wanted)
        diff = [f"{key}: cache {self.meta.get(key)!r}, config {current[key]!r}"
                for key in (*DATA_KEYS, *wanted) if self.meta.get(key) != current[key]]
        if diff:
            raise ConfigError(f"embedding cache {self.path} was made with other settings: " + "; ".join(diff))

    def encoder_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return torch.load(self.path / "encoders.pt", map_location="cpu", weights_only=True)

    def load(self, clip_id: str, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        path = self.clip_path(clip_id)
        if not path.is_file():
            raise StoreError(f"clip {clip_id} is not in embedding cache {self.path}; run `dfew_mm embed` again "
                             "(it adds missing clips)")
        out = {}
        with np.load(path, allow_pickle=False) as data:
            if "video" in modalities:
                out["video_emb"] = torch.from_numpy(data["video"].astype(np.float32))  # (T, D_v)
            if "audio" in modalities:
                out["audio_emb"] = torch.from_numpy(data["audio"].astype(np.float32))  # (T_a, D_a)
                out["audio_emb_mask"] = torch.from_numpy(data["audio_mask"])
                out["audio_emb_time"] = torch.from_numpy(data["audio_time"])
        return out


def build_cache(cfg: ExperimentConfig, out: str | Path, batch_size: int = 16, device: str = "auto",
                progress: bool = True) -> Path:
    """Embed every usable clip of `cfg.data.store` with the config's video/audio encoders.

    Resumable: clips already in the cache are skipped. The encoders are built and loaded
    (pretrained weights as configured) once; their weights are saved with the cache.
    """
    from dfew_mm.models import ENCODERS, build_model

    out = Path(out)
    modalities = [m for m in cfg.model.modalities if m in CACHED_MODALITIES]
    if not modalities:
        raise ConfigError("nothing to embed: the cache holds video and/or audio; pose is read from the store")
    meta = _meta(cfg, modalities)
    if (out / "meta.json").is_file():
        cache = EmbeddingCache(out)
        if cache.meta != meta:
            raise ConfigError(f"{out} holds embeddings made with other settings; choose another --out")
    store = FeatureStore(cfg.data.store)
    model_cfg = dataclasses.replace(cfg.model, modalities=modalities)
    model = build_model(model_cfg)
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    encoders_path = out / "encoders.pt"
    if encoders_path.is_file():
        for m, state in torch.load(encoders_path, map_location="cpu", weights_only=True).items():
            model.encoders[m].load_state_dict(state, strict=True)
    else:
        for m in modalities:
            ENCODERS[m][1](model.encoders[m], model_cfg)  # pretrained weights as configured
        state = {m: model.encoders[m].state_dict() for m in modalities}
        atomic_write_bytes(encoders_path, lambda f: torch.save(state, f))
    atomic_write_bytes(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    model.to(dev).eval()

    todo = [i for i in store.ok_ids() if not (out / "clips" / f"{i}.npz").is_file()]
    log.info("embedding %d clips (%d already cached) with %s on %s", len(todo), len(store.ok_ids()) - len(todo),
             ",".join(modalities), dev)
    dataset = ClipDataset(store, todo, np.zeros(len(todo), np.int64), cfg.data, modalities, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda" and cfg.train.amp)
    with torch.inference_mode(), autocast:
        for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
            batch = batch_to(batch, dev)
            arrays: dict[str, np.ndarray] = {}
            if "video" in modalities:
                arrays["video"] = model.encoders["video"](batch["video"]).float().cpu().numpy()  # (B, T, D_v)
            if "audio" in modalities:
                tokens, mask, times = model.encoders["audio"](batch["audio"], batch["audio_mask"], batch["audio_start"])
                arrays.update(audio=tokens.float().cpu().numpy(), audio_mask=mask.cpu().numpy(),
                              audio_time=times.float().cpu().numpy())
            for b, clip_id in enumerate(batch["clip_id"]):
                clip = {k: (v[b].astype(np.float16) if k in ("video", "audio") else v[b]) for k, v in arrays.items()}
                atomic_write_bytes(out / "clips" / f"{clip_id}.npz", lambda f: np.savez(f, **clip))
    return out
