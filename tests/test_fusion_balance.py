"""Balanced multimodal training: a fused model must find the modality that carries the label.

The regression store is written directly (no MediaPipe): the class is only in the audio filterbank
(a class-specific band of extra energy, buried in noise), while every clip has its own random face
image (which a ResNet memorises within a few epochs) and random body keypoints. Trained on the
fused loss alone, the face branch memorises the training clips before the audio branch is learned
and the fused model stays near chance on the test clips; the default recipe must instead come close
to the audio-only model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _train_stores import SMALL, random_clip
from dfew_mm.balance import Balancer, ogm_coefficients
from dfew_mm.config import load_config
from dfew_mm.data.store import MANIFEST_COLUMNS, FeatureStore
from dfew_mm.datasets.dfew import NUM_CLASSES, SPLIT_DIRNAME, TEST_DIR, TRAIN_DIR
from dfew_mm.errors import ConfigError
from dfew_mm.models import build_model
from dfew_mm.models.classifier import Outputs
from dfew_mm.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES, FACE, AUDIO = 2, 32, 50  # 2 frames of 32 px faces, 0.5 s of filterbank: seconds per epoch
BAND = 8  # mel bins per class band
SIGNAL = 2.0  # extra log-energy in the class band, against unit noise


def audio_cue_store(root: Path, clips: int = 140, test_share: float = 0.4, seed: int = 0) -> tuple[Path, Path]:
    """Split files (fold 1 only) and a store where only the audio carries the class. Returns (dfew, store)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, clips + 1)
    labels = ids % NUM_CLASSES
    test = rng.random(clips) < test_share
    split_root = root / "dfew" / SPLIT_DIRNAME
    for sub, mask in ((TRAIN_DIR, ~test), (TEST_DIR, test)):
        (split_root / sub).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"video_name": [f"{i:05d}" for i in ids[mask]], "label": labels[mask] + 1}).to_csv(
            split_root / sub / "set_1.csv", index=False)
    store = FeatureStore.__new__(FeatureStore)
    store.path, store._manifest = root / "store", None
    store.path.mkdir(parents=True, exist_ok=True)
    for clip_id, label in zip(ids, labels):
        arrays = random_clip(rng, frames=FRAMES, face=FACE, audio=AUDIO)
        face = rng.integers(0, 256, (FACE, FACE, 3), dtype=np.uint8)  # this clip's own face, in every frame
        arrays["faces"] = np.repeat(face[None], FRAMES, axis=0)
        arrays["face_mask"][:] = True
        audio = rng.standard_normal((AUDIO, 128)) - 4.0  # (F, 128) log-mel noise
        audio[:, 16 + label * BAND:16 + (label + 1) * BAND] += SIGNAL
        arrays["audio"] = audio.astype(np.float16)
        store.write_clip(str(clip_id), arrays)
        record = {c: None for c in MANIFEST_COLUMNS}
        record.update(clip_id=str(clip_id), status="ok", error="", has_audio=True)
        store.write_record(record)
    store.rebuild_manifest()
    return root / "dfew", store.path


@pytest.fixture(scope="module")
def audio_store(tmp_path_factory):
    return audio_cue_store(tmp_path_factory.mktemp("audio_cue"))


# The tiny config on this store: 2 frames at 32 px, 0.5 s of audio, 10 epochs of 8 clips a batch.
# Without augmentation: this checks the fusion recipe, and SpecAugment's masks cover much of a 0.5 s window.
# The cue is a steady band of energy, which per-utterance normalisation removes by design (as it removes a
# recording's spectral colour): the filterbank keeps its fixed scaling here.
CUE_CONFIG = [*SMALL, f"data.frames={FRAMES}", f"data.audio_frames={AUDIO}", "model.audio.max_length=64",
              "train.epochs=10", "train.batch_size=8", "data.augment=false", "model.audio.normalise=dataset"]


def train_on_cue(audio_store, out: Path, modalities: str, *extra: str) -> Path:
    dfew, store = audio_store
    cfg = load_config("tiny", [f"data.store={store}", f"data.dfew_root={dfew}", f"train.out_dir={out}",
                               f"model.modalities=[{modalities}]", *CUE_CONFIG, *extra])
    return train(cfg)


def test_uar(run: Path, checkpoint: str = "best") -> float:
    return json.loads((run / "test_metrics.json").read_text())[checkpoint]["uar"]


test_uar.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_fused_model_finds_the_audio_cue(audio_store, tmp_path):
    """Fused video+pose+audio with the default recipe comes within 15 points of audio alone (test UAR,
    checkpoint chosen on validation), while its face path alone stays near chance (1/7). The recipe
    before balanced training (transformer fusion alone) fails this: see the ablation in docs/training.md."""
    from dfew_mm.evaluate import evaluate

    audio = test_uar(train_on_cue(audio_store, tmp_path / "audio", "audio"))
    fused_run = train_on_cue(audio_store, tmp_path / "fused", "video,pose,audio")
    fused = test_uar(fused_run)
    faces = evaluate(fused_run / "best.pt", audio_store[1], modalities="video", out_csv=tmp_path / "faces.csv")
    assert audio > 0.6, audio  # the cue is learnable (chance: 1/7); the transformer-only recipe reaches 0.1-0.2
    # 0.15: on torch 2.14.1 seed 0 gives fused 0.585 against audio 0.698 (the recipe's sd over seeds is 2-10 points)
    assert fused >= audio - 0.15, (fused, audio)
    assert faces["passes"][0]["uar"] < 0.35, faces["passes"][0]["uar"]


def test_ogm_coefficients_slow_only_the_leading_modalities():
    c = ogm_coefficients(torch.tensor([0.9, 0.3, 0.3]), alpha=1.0)
    assert c[0] < 1 and c[1] == 1 and c[2] == 1
    assert torch.isclose(c[0], 1 - torch.tanh(torch.tensor(2.0)))  # rho = 0.9 / 0.3 = 3
    # two modalities: the paper's rule; equal scores: no modulation
    two = ogm_coefficients(torch.tensor([0.6, 0.4]), alpha=0.5)
    assert torch.isclose(two[0], 1 - torch.tanh(torch.tensor(0.25))) and two[1] == 1
    assert (ogm_coefficients(torch.tensor([0.5, 0.5, 0.5]), 1.0) == 1).all()


def test_mixture_weights_and_the_chance_bound():
    from dfew_mm.balance import chance_uar_bound
    from dfew_mm.models.fusion import mix_probabilities

    sure = torch.tensor([[20.0, 0, 0, 0, 0, 0, 0]])  # (1, 7): certain of class 0
    other = torch.tensor([[0.0, 0, 3, 0, 0, 0, 0]])  # leans to class 2
    yes, no = torch.tensor([True]), torch.tensor([False])
    # a confidently wrong member with no weight cannot swing the mixture; probabilities, not logits
    assert mix_probabilities([sure, other], [yes, yes], torch.tensor([0.0, 1.0])).argmax() == 2
    assert mix_probabilities([sure, other], [yes, yes], torch.tensor([0.1, 1.0])).argmax() == 2
    # only a zero-weight member has input: the weighted member decides from its bias, as it would alone
    mixed = mix_probabilities([sure, other], [yes, no], torch.tensor([0.0, 1.0])).exp()
    assert torch.allclose(mixed, other.softmax(-1), atol=1e-5)
    before_validation = mix_probabilities([sure, other], [yes, no], torch.tensor([0.0, 0.0])).exp()
    assert torch.allclose(before_validation, sure.softmax(-1), atol=1e-5)  # no weights yet: the present ones
    none = mix_probabilities([sure, other], [no, no], torch.tensor([0.0, 0.0])).exp()
    assert torch.allclose(none, (sure.softmax(-1) + other.softmax(-1)) / 2, atol=1e-5)
    # what random guessing reaches: 1/7 plus two standard deviations, shrinking with the clips
    small, large = chance_uar_bound(np.arange(15) % 7), chance_uar_bound(np.arange(936) % 7)
    assert 0.3 < small < 0.35 and 1 / 7 < large < 0.17


def test_balancer_modulates_the_step_of_the_leading_encoder():
    from dfew_mm.train import make_optimizer

    cfg = load_config("tiny", SMALL + ["model.modalities=[pose,audio]", "train.ogm_alpha=1.0", "train.aux_weight=1",
                                       "model.fusion.mode=transformer"])
    model = build_model(cfg.model)
    opt, _ = make_optimizer(model, cfg, steps_per_epoch=1)
    groups = {g["modality"] for g in opt.param_groups}
    assert groups == {None, "pose", "audio"}
    balance = Balancer(model, cfg.train)
    labels = torch.tensor([0, 1])
    strong = torch.tensor([[9.0] + [0.0] * 6, [0.0, 9.0] + [0.0] * 5])  # pose: sure and right
    out = Outputs(torch.zeros(2, 7, requires_grad=True), {"pose": strong, "audio": torch.zeros(2, 7)},
                  {"pose": torch.tensor([True, True]), "audio": torch.tensor([True, True])})
    balance.loss(out, labels)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {g["modality"]: g["lr"] for g in opt.param_groups}
    balance.before_step(model, opt)
    after = {g["modality"]: g["lr"] for g in opt.param_groups}
    assert after["pose"] < before["pose"] and after["audio"] == before["audio"] and after[None] == before[None]
    assert set(balance.epoch_record()) == {"ogm_pose", "ogm_audio"}


def test_fusion_modes_keep_the_inference_contract():
    from dfew_mm.batch import collate

    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        a = random_clip(rng, frames=FRAMES, face=FACE, audio=AUDIO)
        samples.append({"video": torch.from_numpy(a["faces"]).permute(0, 3, 1, 2),
                        "video_mask": torch.from_numpy(a["face_mask"]), "pose": torch.from_numpy(a["pose"]),
                        "pose_mask": torch.from_numpy(a["pose_mask"]),
                        "audio": torch.from_numpy(a["audio"].astype(np.float32)),
                        "audio_mask": torch.ones(AUDIO, dtype=torch.bool), "audio_start": 0.0,
                        "frame_time": torch.from_numpy(a["frame_time"]), "label": i, "clip_id": str(i)})
    batch = collate(samples)
    for mode in ("transformer", "late", "both"):
        cfg = load_config("tiny", SMALL + [f"model.fusion.mode={mode}", f"data.audio_frames={AUDIO}"])
        model = build_model(cfg.model).eval()
        logits = model(batch)
        assert logits.shape == (3, NUM_CLASSES)
        out = model(batch, return_unimodal=True)
        assert torch.equal(out.logits, logits)
        assert set(out.members) == {"video", "pose", "audio"} | ({"fusion"} if mode != "late" else set())
        assert model(batch, modalities=["audio"]).shape == (3, NUM_CLASSES)
    single = build_model(load_config("tiny", SMALL + ["model.modalities=[video]", "model.fusion.mode=transformer"]).model)
    assert not single.has_unimodal_heads  # one modality: the fused head is its own head
    with pytest.raises(ConfigError, match="needs trained unimodal heads"):
        cfg = load_config("tiny", SMALL + ["train.aux_weight=0", "train.ogm_alpha=0.5", "model.fusion.mode=transformer"])
        Balancer(build_model(cfg.model), cfg.train)
