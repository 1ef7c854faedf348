"""Small feature stores for model/training tests: DFEW-layout split files and store clips with
random arrays of the contract's shapes and dtypes, written through FeatureStore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dfew_mm.data.store import MANIFEST_COLUMNS, FeatureStore
from dfew_mm.datasets.dfew import NUM_CLASSES, SPLIT_DIRNAME, TEST_DIR, TRAIN_DIR

# Overrides of configs/tiny.yaml for these stores: 4 of their frames, 32 px faces, 1 s of audio, CPU.
SMALL = ["data.face_size=32", "data.frames=4", "data.audio_frames=100", "model.audio.max_length=112",
         "model.video.input_size=0", "train.epochs=3", "train.batch_size=8", "train.device=cpu"]


def random_clip(rng: np.random.Generator, frames: int = 8, face: int = 32, audio: int = 150) -> dict:
    return {
        "faces": rng.integers(0, 256, (frames, face, face, 3), dtype=np.uint8),
        "face_mask": rng.random(frames) > 0.2,
        "face_boxes": rng.random((frames, 4), dtype=np.float32),
        "pose": rng.random((frames, 33, 4), dtype=np.float32),
        "pose_mask": rng.random(frames) > 0.2,
        "audio": (rng.standard_normal((audio, 128)) * 4 - 4).astype(np.float16),
        "frame_index": np.arange(frames, dtype=np.int32) * 3,
        "frame_time": (np.arange(frames) * 0.125).astype(np.float32),
        "luma": rng.random(frames, dtype=np.float32) * 255,
        # the 16 kHz samples of that filterbank (a tone: drawn without touching rng's stream)
        "waveform": (np.sin(np.arange((audio - 1) * 160 + 400) * 0.05) * 3000).astype(np.int16),
    }


def make_store(root: Path, clips: int = 40, missing: tuple[int, ...] = (), failed: tuple[int, ...] = (),
               silent: tuple[int, ...] = (), seed: int = 0, **clip_kw) -> tuple[Path, Path]:
    """Write split CSVs for 5 folds (clip i tests in fold i % 5 + 1) and a store with every clip
    except `missing`; `failed` clips get an error record; `silent` clips have no audio.
    Returns (dfew_root, store_path)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, clips + 1)
    labels = ids % NUM_CLASSES + 1  # 1-based, every class present
    split_root = root / "dfew" / SPLIT_DIRNAME
    for k in range(1, 6):
        is_test = (ids % 5) + 1 == k
        for sub, mask in ((TRAIN_DIR, ~is_test), (TEST_DIR, is_test)):
            (split_root / sub).mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"video_name": [f"{i:05d}" for i in ids[mask]], "label": labels[mask]}).to_csv(
                split_root / sub / f"set_{k}.csv", index=False)
    store = FeatureStore.__new__(FeatureStore)
    store.path, store._manifest = root / "store", None
    store.path.mkdir(parents=True, exist_ok=True)
    for i in ids:
        if i in missing:
            continue
        record = {c: None for c in MANIFEST_COLUMNS}
        record.update(clip_id=str(i), status="ok", error="", has_audio=i not in silent)
        if i in failed:
            record.update(status="failed", error="decode error")
        else:
            arrays = random_clip(rng, **clip_kw)
            if i in silent:
                arrays["audio"] = np.zeros((0, 128), np.float16)
            store.write_clip(str(i), arrays)
        store.write_record(record)
    store.rebuild_manifest()
    return root / "dfew", store.path
