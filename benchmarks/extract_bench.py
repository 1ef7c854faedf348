"""Extraction throughput against a decode floor measured in the same run.

Single worker, the seven real DFEW sample clips: per clip, the full extraction (decode, face
detection and crops, pose, audio fbank, quality stats, atomic write to a store) and the floor
(decord decoding the same T sampled frames and the audio track, nothing else), interleaved over
several rounds so that machine load affects both alike. Then clips/s with 2 worker processes
(including their start-up) and the peak resident memory of one worker.

    python benchmarks/extract_bench.py --clips-dir ../shared/data/clips/dfew_samples \
        --assets-dir ../shared/assets/mediapipe

The last line is the ratio extraction/floor (target <= 2.5).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from dfew_mm.constants import DEFAULT_FRAMES, SAMPLE_RATE
from dfew_mm.data.store import FeatureStore
from dfew_mm.extract.options import ExtractOptions
from dfew_mm.extract.run import list_clips, run_extraction
from dfew_mm.extract.worker import ClipExtractor
from dfew_mm.extract.decode import sample_indices
from dfew_mm.extract.run import limit_threads
from dfew_mm.extract.worker import resolve_models

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def decode_floor(path: Path, t: int) -> None:
    """What any extractor must pay: decord decoding the sampled frames and the 16 kHz audio."""
    from decord import AudioReader, VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    reader.get_batch(sample_indices(len(reader), t).tolist()).asnumpy()
    AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)[:].asnumpy()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ChildPeakRss(threading.Thread):
    """Polls VmHWM (peak resident set since exec) of this process's children, in MB.

    getrusage(RUSAGE_CHILDREN) would not do: on Linux a child's maxrss starts at its parent's.
    """

    def __init__(self, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.interval_s, self.peak_mb, self._done = interval_s, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            for child in psutil.Process().children(recursive=True):
                try:
                    status = Path(f"/proc/{child.pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-dir", type=Path, default=SHARED / "data" / "clips" / "dfew_samples")
    parser.add_argument("--assets-dir", type=Path, default=SHARED / "assets" / "mediapipe")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the clips (default 3)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--pose-model", default="full", choices=("full", "lite"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    limit_threads()  # measure what one worker process does: one core
    clips = sorted(list_clips(clips_dir=args.clips_dir).items())
    options = ExtractOptions(frames=args.frames, pose_model=args.pose_model)
    extractor = ClipExtractor(options, resolve_models(options, args.assets_dir))
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))

        def extract(clip_id: str, path: Path) -> None:
            record, arrays = extractor.extract(clip_id, path)
            if arrays is None:
                raise SystemExit(f"{path}: extraction failed: {record['error']}")
            store.write_clip(clip_id, arrays)
            store.write_record(record)

        for clip_id, path in clips:  # warm-up: first-call costs of MediaPipe, torch, decord
            extract(clip_id, path)
            decode_floor(path, args.frames)
        times = {"extract": {c: [] for c, _ in clips}, "floor": {c: [] for c, _ in clips}}
        for _ in range(args.rounds):
            for clip_id, path in clips:
                start = time.perf_counter()
                decode_floor(path, args.frames)
                times["floor"][clip_id].append(time.perf_counter() - start)
                start = time.perf_counter()
                extract(clip_id, path)
                times["extract"][clip_id].append(time.perf_counter() - start)
    extractor.close()
    single_rss = peak_rss_mb()

    print(f"{'clip':<12}{'extract s':>10}{'floor s':>10}{'ratio':>8}")
    for clip_id, _ in clips:
        ext, flo = np.mean(times["extract"][clip_id]), np.mean(times["floor"][clip_id])
        print(f"{clip_id:<12}{ext:>10.3f}{flo:>10.3f}{ext / flo:>8.2f}")
    mean_extract = float(np.mean([np.mean(v) for v in times["extract"].values()]))
    mean_floor = float(np.mean([np.mean(v) for v in times["floor"].values()]))
    print(f"{'mean':<12}{mean_extract:>10.3f}{mean_floor:>10.3f}   ({args.rounds} rounds, T={args.frames}, "
          f"pose {args.pose_model})")

    # Two worker processes over the clips listed twice (spawn and model loading included).
    monitor = ChildPeakRss()
    monitor.start()
    with tempfile.TemporaryDirectory() as tmp:
        twice = [(f"{clip_id}_{k}", path) for k in range(2) for clip_id, path in clips]
        summary = run_extraction(twice, Path(tmp) / "store", options, workers=2, assets_dir=args.assets_dir,
                                 progress=False)
    worker_rss = monitor.stop()
    print(f"2 workers: {summary.ok} clips in {summary.elapsed_s:.1f} s = {summary.ok / summary.elapsed_s:.2f} clips/s")
    print(f"peak RSS: single in-process worker {single_rss:.0f} MB, largest pool worker {worker_rss:.0f} MB "
          "(target < 1500 MB)")
    print(f"ratio extraction/floor: {mean_extract / mean_floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
