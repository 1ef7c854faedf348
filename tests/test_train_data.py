"""ClipDataset, collate, the validation split and missing-clip handling, on small real stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _train_stores import make_store
from dfew_mm.config import load_config
from dfew_mm.batch import collate
from dfew_mm.data.dataset import ClipDataset, frame_indices
from dfew_mm.models.encoders.audio import crop_audio, window_starts
from dfew_mm.data.splits import fold_splits, stratified_val_split
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import StoreError


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_store")
    return make_store(root, clips=40, silent=(7,), frames=10, face=32, audio=150)


def data_config(dfew, store, **over):
    overrides = [f"data.store={store}", f"data.dfew_root={dfew}", "data.face_size=32", "data.frames=6",
                 "data.audio_frames=120", "model.audio.max_length=128", *[f"{k}={v}" for k, v in over.items()]]
    return load_config("tiny", overrides).data


def test_samples_and_batches_follow_the_contract(small_store):
    dfew, path = small_store
    cfg = data_config(dfew, path)
    store = FeatureStore(path)
    ds = ClipDataset(store, ["7", "8"], [1, 2], cfg, ["video", "pose", "audio"], train=False)
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 6, 3, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["video_mask"].shape == batch["pose_mask"].shape == batch["frame_time"].shape == (2, 6)
    assert batch["pose"].shape == (2, 6, 33, 4) and batch["pose"].dtype == torch.float32
    # evaluation reads the whole clip (model.audio.eval_window: clip): 3 windows of 120 frames
    assert batch["audio"].shape == (2, 3, 120, 128) and batch["audio_mask"].shape == (2, 3, 120)
    assert not batch["audio_mask"][0].any() and batch["audio_mask"][1, 0].all()  # clip 7 has no audio
    assert batch["label"].tolist() == [1, 2] and batch["clip_id"] == ["7", "8"]
    raw = store["8"]
    idx = frame_indices(10, 6, None)
    assert torch.equal(batch["video"][1], torch.from_numpy(raw["faces"][idx]).permute(0, 3, 1, 2))
    assert torch.equal(batch["frame_time"][1], torch.from_numpy(raw["frame_time"][idx]))
    assert torch.equal(batch["video_mask"][1], torch.from_numpy(raw["face_mask"][idx]))


def test_only_requested_modalities_are_read(small_store):
    dfew, path = small_store
    sample = ClipDataset(FeatureStore(path), ["8"], [0], data_config(dfew, path), ["pose"], train=False)[0]
    assert not sample["video_mask"].any() and not sample["audio_mask"].any() and sample["pose_mask"].any()
    assert not sample["video"].any()


def test_training_samples_are_random_but_reproducible(small_store):
    dfew, path = small_store
    make = lambda: ClipDataset(FeatureStore(path), ["8"], [0], data_config(dfew, path), ["video"], train=True, seed=1)  # noqa: E731
    a, b = make(), make()
    assert torch.equal(a[0]["frame_time"], b[0]["frame_time"])
    times = {tuple(a[0]["frame_time"].tolist()) for a.epoch in range(6)}
    assert len(times) > 1


def test_array_transform_is_applied(small_store):
    dfew, path = small_store
    dark = lambda faces, rng: (faces // 4).astype(np.uint8)  # noqa: E731
    store, cfg = FeatureStore(path), data_config(dfew, path)
    plain = ClipDataset(store, ["8"], [0], cfg, ["video"], train=False)[0]["video"]
    darker = ClipDataset(store, ["8"], [0], cfg, ["video"], train=False, transforms={"faces": dark})[0]["video"]
    assert torch.equal(darker, plain // 4)


def test_frame_and_audio_resampling():
    assert frame_indices(32, 4, None).tolist() == [4, 12, 20, 28]
    assert frame_indices(3, 6, None).tolist() == [0, 0, 1, 1, 2, 2]  # short clips repeat frames
    rng = np.random.default_rng(0)
    picked = frame_indices(32, 4, rng)
    assert all(8 * i <= p < 8 * (i + 1) for i, p in enumerate(picked))
    audio, mask = crop_audio(np.ones((50, 128), np.float16), 80)
    assert audio.shape == (80, 128) and mask.sum() == 50 and not audio[50:].any()
    assert window_starts(50, 80, rng).tolist() == [0] and window_starts(50, 80, None, "clip", 3).tolist() == [0]
    [start] = window_starts(300, 80, rng)
    audio, mask = crop_audio(np.arange(300, dtype=np.float16)[:, None].repeat(128, 1), 80, start)
    assert mask.all() and audio[0, 0] == start and 0 <= start <= 220
    assert window_starts(300, 80, None, "centre").tolist() == [110]
    assert window_starts(300, 80, None, "clip", 3).tolist() == [0, 110, 220]  # first to last frame


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(7), [40, 30, 20, 10, 10, 5, 1])
    val = stratified_val_split(labels, 0.1, seed=3)
    assert val.sum() == round(len(labels) * 0.1)
    assert np.array_equal(val, stratified_val_split(labels, 0.1, seed=3))
    assert not np.array_equal(val, stratified_val_split(labels, 0.1, seed=4))
    counts = np.bincount(labels[val], minlength=7)
    assert counts[0] == 4 and counts[1] == 3 and counts[2] == 2 and counts[6] == 0  # single clip stays in train


def test_fold_splits_keep_test_fold_apart(small_store):
    dfew, path = small_store
    splits = fold_splits(FeatureStore(path), data_config(dfew, path, **{"data.fold": 2}), seed=0)
    train, val, test = set(splits.train.ids), set(splits.val.ids), set(splits.test.ids)
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 40 and len(test) == 8 and len(val) >= 1
    assert all((int(i) % 5) + 1 == 2 for i in test)


def test_missing_and_failed_clips_fail_clearly_or_are_excluded(tmp_path):
    dfew, path = make_store(tmp_path, clips=20, missing=(3, 4, 10), failed=(6,), frames=4, face=16, audio=20)
    store = FeatureStore(path)
    with pytest.raises(StoreError, match=r"3 of 16 train clips of fold 1 .*3 \(not extracted\), 4 \(not extracted\), "
                                         r"6 \(extraction failed: decode error\)") as err:
        fold_splits(store, data_config(dfew, path), seed=0)
    assert "--allow-missing" in str(err.value)
    splits = fold_splits(store, data_config(dfew, path, **{"data.allow_missing": "true"}), seed=0)
    assert sorted(splits.excluded["clip_id"], key=int) == ["3", "4", "6", "10"]
    assert set(splits.excluded["split"]) == {"train", "test"}
    assert not {"3", "4", "6", "10"} & set(splits.train.ids + splits.val.ids + splits.test.ids)


def test_wrong_store_path_and_bad_modalities_are_rejected(tmp_path, small_store):
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore(tmp_path / "nowhere")
    dfew, path = small_store
    for mods in ([], ["smell"]):
        with pytest.raises(StoreError, match="non-empty subset of video, pose, audio"):
            ClipDataset(FeatureStore(path), ["8"], [0], data_config(dfew, path), mods, train=False)


def test_face_size_mismatch_names_the_setting(small_store):
    dfew, path = small_store
    ds = ClipDataset(FeatureStore(path), ["8"], [0], data_config(dfew, path, **{"data.face_size": 112}), ["video"],
                     train=False)
    with pytest.raises(StoreError, match="data.face_size"):
        ds[0]


def test_worker_batches_equal_in_process_batches(small_store):
    from torch.utils.data import DataLoader

    dfew, path = small_store
    ds = ClipDataset(FeatureStore(path), ["7", "8", "9", "10"], [0, 1, 2, 3], data_config(dfew, path),
                     ["video", "pose", "audio"], train=True, seed=5)
    batches = [next(iter(DataLoader(ds, batch_size=4, num_workers=w, collate_fn=collate))) for w in (0, 2)]
    for key, value in batches[0].items():
        other = batches[1][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    assert batches[1]["video"].shape == (4, 6, 3, 32, 32)
