"""Training-time augmentation: reproducible per (seed, epoch, clip), one flip shared by faces, pose and
blendshapes, the batched face augmentation equal to torchvision's ops, mixup, never in evaluation,
and exact resume with it on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from _train_stores import SMALL, make_store, random_clip
from dfew_mm.balance import Balancer
from dfew_mm.batch import collate, mix, mixup_draw
from dfew_mm.config import load_config
from dfew_mm.constants import BLENDSHAPE_NAMES, N_BLENDSHAPES, POSE_LANDMARK_NAMES
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import MANIFEST_COLUMNS, FeatureStore
from dfew_mm.errors import ConfigError
from dfew_mm.evaluate import evaluate
from dfew_mm.models import build_model
from dfew_mm.models.encoders.video import augment_faces
from dfew_mm.predictions import PROB_COLUMNS
from dfew_mm.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODALITIES = ["video", "pose", "blendshapes"]
FACE, FRAMES = 32, 6
LEFT_WRIST, RIGHT_WRIST = POSE_LANDMARK_NAMES.index("left_wrist"), POSE_LANDMARK_NAMES.index("right_wrist")
SMILE_LEFT, SMILE_RIGHT = BLENDSHAPE_NAMES.index("mouthSmileLeft"), BLENDSHAPE_NAMES.index("mouthSmileRight")


def asymmetric_clip(rng: np.random.Generator) -> dict:
    """A clip that is not its own mirror image in any modality: the left half of every face bright, the
    left wrist raised at the right of the image, a smile on the left of the mouth only."""
    arrays = random_clip(rng, frames=FRAMES, face=FACE, audio=120)
    arrays["faces"][:] = 20
    arrays["faces"][:, :, :FACE // 2] = 220
    arrays["face_mask"][:] = True
    pose = np.full((FRAMES, 33, 4), 0.5, np.float32)
    pose[:, 11, 0], pose[:, 12, 0] = 0.6, 0.4  # shoulders 0.2 image widths apart
    pose[:, LEFT_WRIST, :2], pose[:, RIGHT_WRIST, :2] = (0.8, 0.2), (0.35, 0.7)
    arrays["pose"], arrays["pose_mask"] = pose, np.ones(FRAMES, bool)
    scores = np.full((FRAMES, N_BLENDSHAPES), 0.3, np.float32)
    scores[:, SMILE_LEFT], scores[:, SMILE_RIGHT] = 0.9, 0.1
    arrays["blendshapes"] = scores
    return arrays


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    """Four asymmetric clips with faces, pose and blendshapes."""
    rng = np.random.default_rng(0)
    store = FeatureStore.__new__(FeatureStore)
    store.path, store._manifest = tmp_path_factory.mktemp("aug_store"), None
    for clip_id in ("1", "2", "3", "4"):
        store.write_clip(clip_id, asymmetric_clip(rng))
        store.write_record({**{c: None for c in MANIFEST_COLUMNS}, "clip_id": clip_id, "status": "ok", "error": ""})
    store.rebuild_manifest()
    return store


def dataset(store, *overrides: str, train: bool = True, seed: int = 0) -> ClipDataset:
    cfg = load_config("tiny", [f"data.face_size={FACE}", f"data.frames={FRAMES}", "data.augment=true",
                               "model.video.input_size=0", *overrides])
    return ClipDataset(store, ["1", "2", "3", "4"], [0, 1, 2, 3], cfg.data, MODALITIES, train=train, seed=seed,
                       model_cfg=cfg.model)


def faces_seen(sample, encoder) -> torch.Tensor:
    """(T, 3, S, S) what the face backbone receives in training: the clip's augmentation applied."""
    batch = collate([sample])
    return encoder.preprocess(batch["video"], batch["video_aug"])


def same(a: dict, b: dict, keys=("video", "video_aug", "pose", "blendshapes")) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_each_modality_repeats_per_seed_epoch_and_clip_and_changes_with_the_epoch(store):
    strong = ("model.video.aug.lowlight=1", "model.pose.aug.jitter=0.05")  # low light too: faces change in the loader
    a, b = dataset(store, *strong), dataset(store, *strong)
    for key in ("video", "video_aug", "pose", "blendshapes"):
        assert torch.equal(a[2][key], b[2][key]), key  # same seed, epoch and clip
        first = a[2][key]
        a.set_epoch(1)
        assert not torch.equal(a[2][key], first), key  # another epoch
        assert not torch.equal(a[3][key], a[2][key]), key  # another clip
        a.set_epoch(0)
    assert not same(dataset(store, *strong, seed=1)[2], b[2])  # another seed
    # one modality's draws do not depend on which other modalities are read
    cfg = load_config("tiny", [f"data.face_size={FACE}", f"data.frames={FRAMES}", "data.augment=true"])
    pose_only = ClipDataset(store, ["1", "2", "3", "4"], [0] * 4, cfg.data, ["pose"], train=True, model_cfg=cfg.model)
    assert torch.equal(pose_only[2]["pose"], dataset(store)[2]["pose"])


def test_the_flip_is_shared_by_faces_pose_and_blendshapes(store):
    """Geometry and jitter off: what remains is the flip, which must be all or nothing across modalities."""
    flip_only = ("model.video.aug.crop=1", "model.video.aug.rotate=0", "model.video.aug.brightness=0",
                 "model.video.aug.contrast=0", "model.video.aug.saturation=0", "model.pose.aug.jitter=0",
                 "model.blendshapes.aug.jitter=0")
    ds = dataset(store, *flip_only)
    encoder = build_model(load_config("tiny", ["model.video.input_size=0"]).model).encoders["video"].train()
    plain = dataset(store, train=False)[0]
    states = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        s = ds[0]
        face = faces_seen(s, encoder)
        face_flipped = bool(face[..., :FACE // 2].mean() < face[..., FACE // 2:].mean())  # the bright half moved
        pose_flipped = bool(s["pose"][0, LEFT_WRIST, 1] > 0.5)  # the raised wrist is now the right one
        blend_flipped = bool(s["blendshapes"][0, SMILE_LEFT] < s["blendshapes"][0, SMILE_RIGHT])
        assert face_flipped == pose_flipped == blend_flipped == bool(s["video_aug"][4] < 0), epoch
        if pose_flipped:  # the mirror image exactly: x -> 1 - x, left and right swapped
            assert s["pose"][0, LEFT_WRIST, :2].tolist() == pytest.approx([1 - 0.35, 0.7])
            assert s["pose"][0, RIGHT_WRIST, :2].tolist() == pytest.approx([1 - 0.8, 0.2])
            assert s["blendshapes"][0, [SMILE_LEFT, SMILE_RIGHT]].tolist() == pytest.approx([0.1, 0.9])
        else:
            assert same(s, plain, ("pose", "blendshapes"))
        states.append(pose_flipped)
    assert 0 < sum(states) < len(states)  # both cases were seen (data.hflip = 0.5)


def test_batched_face_augmentation_is_torchvisions_per_clip():
    """augment_faces on a batch of clips equals torchvision's functional ops applied clip by clip."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 255  # three frames, one clip each
    # clip 0: the top-left quadrant, mirrored; clip 1: rotated by 10 degrees; clip 2: colour jitter
    params = torch.tensor([[-0.5, -0.5, 0.5, 0.5, -1, 0, 1, 1, 1],
                           [0, 0, 1, 1, 1, math.radians(10), 1, 1, 1],
                           [0, 0, 1, 1, 1, 0, 1.2, 0.7, 1.3]])
    out = augment_faces(x, params)
    crop = TF.horizontal_flip(TF.resized_crop(x[:1], 0, 0, 16, 16, [32, 32], antialias=False))
    rotated = TF.rotate(x[1:2], 10.0, interpolation=InterpolationMode.BILINEAR)
    jitter = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[2:] / 255, 1.2), 0.7), 1.3) * 255
    inner = (..., slice(1, -1), slice(1, -1))  # the outermost pixels differ by torchvision's edge handling
    assert torch.allclose(out[:1][inner], crop[inner], atol=1e-3)
    assert torch.allclose(out[1:2][inner], rotated[inner], atol=1e-3)
    assert torch.allclose(out[2:], jitter, atol=0.02)  # grey weights 0.299 (LUMA_WEIGHTS) vs torchvision's 0.2989
    identity = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1, 1.0]] * 3)
    assert torch.allclose(augment_faces(x, identity), x, atol=1e-3)


def test_evaluation_never_augments(store):
    on, off = dataset(store, train=False), dataset(store, "data.augment=false", train=False)
    for i in range(4):
        assert "video_aug" not in on[i] and same(on[i], off[i], ("video", "pose", "blendshapes"))
    # a model in eval mode ignores augmentation parameters even when a batch carries them
    model = build_model(load_config("tiny", ["model.modalities=[video,pose,blendshapes]",
                                             "model.video.input_size=0"]).model).eval()
    augmented = collate([dataset(store)[i] for i in range(4)])
    plain = {k: v for k, v in augmented.items() if k != "video_aug"}
    with torch.no_grad():
        assert torch.equal(model(augmented), model(plain))
        model.train()
        assert not torch.equal(model.encoders["video"](augmented["video"], augmented["video_aug"]),
                               model.encoders["video"](augmented["video"]))


def test_mixup_mixes_every_input_with_its_mask_and_the_loss_mixes_the_labels(store):
    batch = collate([dataset(store)[i] for i in range(4)])
    batch["pose_mask"][1, 0] = False
    order, lam = mixup_draw(0.4, [0, 0, 0, 0], 4)
    assert sorted(order.tolist()) == [0, 1, 2, 3] and 0 <= lam <= 1
    again = mixup_draw(0.4, [0, 0, 0, 0], 4)
    assert torch.equal(order, again[0]) and lam == again[1]  # seeded: a resumed run draws the same
    order = torch.tensor([1, 0, 3, 2])
    mixed = mix(batch, order, 0.25)
    assert torch.allclose(mixed["pose"], 0.25 * batch["pose"] + 0.75 * batch["pose"][order])
    expect = (0.25 * batch["video"].float() + 0.75 * batch["video"][order].float()).round()
    assert mixed["video"].dtype == torch.uint8 and torch.equal(mixed["video"].float(), expect)
    assert not mixed["pose_mask"][0, 0] and not mixed["pose_mask"][1, 0]  # valid where both clips were
    for key in ("label", "frame_time", "video_aug"):
        assert torch.equal(mixed[key], batch[key])
    assert same(mix(batch, order, 1.0), batch, ("video", "pose", "blendshapes"))

    cfg = load_config("tiny", ["model.modalities=[video,pose,blendshapes]", "model.video.input_size=0"])
    model = build_model(cfg.model).train()
    balance = Balancer(model, cfg.train)
    torch.manual_seed(0)
    out = model(mixed, return_unimodal=True)
    labels = mixed["label"]
    loss = balance.loss(out, labels, (labels[order], 0.25))
    expected = 0.25 * balance.loss(out, labels) + 0.75 * balance.loss(out, labels[order])
    assert torch.allclose(loss, expected)


def test_augmentation_settings_are_range_checked():
    for bad in ("model.video.aug.crop=0", "model.video.aug.rotate=-1", "model.pose.aug.jitter=-0.1",
                "model.blendshapes.aug.jitter=2", "model.video.aug.lowlight=1.5", "train.mixup=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("tiny", [bad])


# -- the training loop ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("aug_train_store"), clips=30, frames=6, face=32, audio=110)


def small_config(train_store, out, *extra: str):
    dfew, path = train_store
    return load_config("tiny", [f"data.store={path}", f"data.dfew_root={dfew}", f"train.out_dir={out}", *SMALL,
                                "model.modalities=[video,pose]", "data.augment=true", "train.mixup=0.4",
                                "model.video.aug.lowlight=0.5", *extra])


def test_resume_is_exact_with_augmentation_and_mixup(train_store, tmp_path):
    straight = train(small_config(train_store, tmp_path / "straight"))
    cut = small_config(train_store, tmp_path / "cut")
    train(cut, stop_after_epochs=1)
    train(cut, resume=True)
    a = torch.load(straight / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["meta"]["best"] == b["meta"]["best"]
    # and augmentation changed training: without it the weights differ
    plain = train(small_config(train_store, tmp_path / "plain", "data.augment=false", "train.mixup=0"))
    c = torch.load(plain / "last.pt", weights_only=False)
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])

    # two evaluations of a checkpoint trained with augmentation give identical predictions, equal to the
    # test predictions training wrote (the same unaugmented inference)
    first = evaluate(straight / "best.pt", train_store[1], out_csv=tmp_path / "a.csv")
    second = evaluate(straight / "best.pt", train_store[1], out_csv=tmp_path / "b.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    assert first["passes"][0]["confusion"] == second["passes"][0]["confusion"]
    written = pd.read_csv(straight / "test_predictions.csv", dtype={"clip_id": str})
    best = written[written["checkpoint"] == "best"].reset_index(drop=True)
    ours = pd.read_csv(tmp_path / "a.csv", dtype={"clip_id": str})
    assert np.allclose(best[list(PROB_COLUMNS)].to_numpy(), ours[list(PROB_COLUMNS)].to_numpy(), atol=1e-5)
