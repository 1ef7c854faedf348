"""DataLoader throughput from a feature store versus a floor of plain np.load of the same files.

    python benchmarks/loader_bench.py                       # a random store of default-config shapes
    python benchmarks/loader_bench.py --config strong         # 224 px faces, waveform, blendshapes
    python benchmarks/loader_bench.py --store FEATURES --workers 8
    python benchmarks/loader_bench.py data.augment=false     # training samples without augmentation

Both paths read the same clip files after a warm-up pass (page cache hot for both). The floor
opens every npz and reads all of its arrays in one process; the loader builds training samples
(frame resampling, audio crop, masks, and the augmentation of each modality when `data.augment` is on)
and collated batches with `--workers` processes.
Prints clips/s for each and, last, the ratio loader / floor (target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dfew_mm.config import load_config
from dfew_mm.batch import collate
from dfew_mm.constants import HOP_SAMPLES, N_BLENDSHAPES, WAVEFORM_ARRAY
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.store import MANIFEST_COLUMNS, FeatureStore


def write_random_store(path: Path, clips: int, frames: int, face: int, audio_frames: int, seed: int = 0) -> list[str]:
    """A store of `clips` clips with random arrays of the contract's shapes (benchmark input only): every
    array of store format 2, the waveform and the optional blendshapes included, so any config can read it."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(path)
    ids = [str(i) for i in range(1, clips + 1)]
    for clip_id in ids:
        store.write_clip(clip_id, {
            "faces": rng.integers(0, 256, (frames, face, face, 3), dtype=np.uint8),
            "face_mask": np.ones(frames, bool), "face_boxes": rng.random((frames, 4), dtype=np.float32),
            "pose": rng.random((frames, 33, 4), dtype=np.float32), "pose_mask": np.ones(frames, bool),
            "audio": rng.standard_normal((audio_frames, 128)).astype(np.float16),
            "frame_index": np.arange(frames, dtype=np.int32), "frame_time": np.arange(frames, dtype=np.float32) / 8,
            "luma": np.full(frames, 100, np.float32),
            WAVEFORM_ARRAY: rng.integers(-3000, 3000, audio_frames * HOP_SAMPLES, dtype=np.int16),
            "blendshapes": rng.random((frames, N_BLENDSHAPES), dtype=np.float32)})
        store.write_record({**{c: None for c in MANIFEST_COLUMNS}, "clip_id": clip_id, "status": "ok", "error": ""})
    store.rebuild_manifest()
    return ids


def floor_clips_per_s(store: FeatureStore, ids: list[str]) -> float:
    tic = time.perf_counter()
    for clip_id in ids:
        with np.load(store.clip_path(clip_id)) as data:
            for name in data.files:
                data[name]
    return len(ids) / (time.perf_counter() - tic)


def loader_clips_per_s(store: FeatureStore, ids: list[str], cfg, workers: int, repeats: int) -> float:
    dataset = ClipDataset(store, ids, np.zeros(len(ids), np.int64), cfg.data, cfg.model.modalities, train=True,
                          model_cfg=cfg.model)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    best = 0.0
    for _ in range(repeats + 1):  # the first pass starts the workers and is not counted
        tic, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["clip_id"])
        best = max(best, n / (time.perf_counter() - tic)) if _ else 0.0
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="default")
    p.add_argument("--store", help="an extracted store (default: write a random one of the config's shapes)")
    p.add_argument("--clips", type=int, default=256, help="clips to read")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--stored-frames", type=int, default=16, help="frames per clip in the random store")
    p.add_argument("--repeats", type=int, default=3, help="best of N passes for each path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.augment=false")
    args = p.parse_args()

    # One intra-op thread, as inside DataLoader workers: the floor is single-threaded too, and
    # torch's parallel copies only add synchronisation cost on small per-batch tensors.
    torch.set_num_threads(1)
    cfg = load_config(args.config, ["data.num_workers=0", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store = FeatureStore(args.store)
            ids = store.ok_ids()[:args.clips]
        else:
            ids = write_random_store(Path(tmp) / "store", args.clips, args.stored_frames, cfg.data.face_size,
                                     cfg.data.audio_frames)
            store = FeatureStore(Path(tmp) / "store")
        size_mb = sum(store.clip_path(i).stat().st_size for i in ids) / 1e6
        floor_clips_per_s(store, ids)  # warm the page cache
        floor = max(floor_clips_per_s(store, ids) for _ in range(args.repeats))
        single = loader_clips_per_s(store, ids, cfg, 0, args.repeats)
        loader = loader_clips_per_s(store, ids, cfg, args.workers, args.repeats)
    print(f"{len(ids)} clips, {size_mb / len(ids):.2f} MB/clip, config {args.config}: {cfg.data.frames} frames, "
          f"{cfg.data.face_size} px, {cfg.data.audio_frames} audio frames, batch {cfg.train.batch_size}, "
          f"augmentation {'on' if cfg.data.augment else 'off'}")
    print(f"floor  np.load of all arrays, 1 process : {floor:8.1f} clips/s")
    print(f"loader DataLoader, 0 workers           : {single:8.1f} clips/s")
    print(f"loader DataLoader, {args.workers} workers           : {loader:8.1f} clips/s")
    print(f"ratio loader/floor: {loader / floor:.2f}")


if __name__ == "__main__":
    sys.exit(main())
