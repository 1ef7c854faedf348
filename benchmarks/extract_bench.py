"""Extraction time per clip against a decode floor measured in the same run, with the CLI defaults.

The input is the seven real DFEW sample clips; the options are `ExtractOptions()`, which is what
`preprocess/extract.py` runs with no flags. The floor is what any extractor must pay: decord
decoding the same T sampled frames and the audio track at 16 kHz mono, nothing else. Floor and
extraction alternate clip by clip (or run by run) over several rounds, so that machine load
affects both alike, and the ratio is the median over rounds of the per-round ratio.

    python benchmarks/extract_bench.py          # in-process: per-stage seconds, 2 workers, memory
    python benchmarks/extract_bench.py --cli    # the whole CLI process, as a user runs it

In-process (default): one worker's ClipExtractor extracts each clip and writes it to a store;
per clip and stage (decode, resize for detection, face detection, crop, pose, audio fbank,
quality stats, write) the mean seconds over the rounds. Then clips/s with 2 worker processes
(their start-up included) and the peak resident memory of one worker.

--cli: per round, `preprocess/extract.py --workers 1` on the clips listed once and on the clips
listed twice (other ids), each into a fresh store; (t_twice - t_once) / clips is the time per clip
with the start-up (imports, model loading) cancelled out. The two methods agree within about 10%.
The CLI processes get OMP_NUM_THREADS=1 unless it is set (one core per worker).

Both print the per-round ratios of wall-clock time and of CPU time; on a machine shared with other
jobs the CPU-time ratio moves less. The last line is the wall-clock ratio extraction/floor, the
median over rounds (target <= 1.8).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from dfew_mm.constants import SAMPLE_RATE
from dfew_mm.data.store import FeatureStore
from dfew_mm.extract.options import ExtractOptions
from dfew_mm.extract.run import list_clips, run_extraction
from dfew_mm.extract.worker import ClipExtractor
from dfew_mm.extract.decode import sample_indices
from dfew_mm.extract.pool import limit_threads
from dfew_mm.extract.worker import STAGES, resolve_models

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def decode_floor(path: Path, t: int) -> None:
    """What any extractor must pay: decord decoding the sampled frames and the 16 kHz audio."""
    from decord import AudioReader, VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    reader.get_batch(sample_indices(len(reader), t).tolist()).asnumpy()
    AudioReader(str(path), ctx=cpu(0), sample_rate=SAMPLE_RATE, mono=True)[:].asnumpy()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


# -- in-process: one worker, per stage ----------------------------------------------------------------
def bench_in_process(clips: list[tuple[str, Path]], options: ExtractOptions, args) -> float:
    limit_threads()  # measure what one worker process does: one core
    extractor = ClipExtractor(options, resolve_models(options, args.assets_dir))
    columns = [s for s in STAGES if (s != "blendshapes" or options.blendshapes) and (s != "darken" or options.darken)]
    columns += ["write"]
    stage_s = {c: {name: [] for name in columns} for c, _ in clips}  # clip -> stage -> seconds per round
    times = {"extract": {c: [] for c, _ in clips}, "floor": {c: [] for c, _ in clips}}
    cpu = {"extract": [0.0] * args.rounds, "floor": [0.0] * args.rounds}  # CPU seconds per round, all threads
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))

        def extract(clip_id: str, path: Path) -> dict[str, float]:
            record, arrays = extractor.extract(clip_id, path)
            if arrays is None:
                raise SystemExit(f"{path}: extraction failed: {record['error']}")
            start = time.perf_counter()
            store.write_clip(clip_id, arrays)
            store.write_record(record)
            rates[clip_id] = (record["face_rate"], record["pose_rate"])
            return {**extractor.stage_s, "write": time.perf_counter() - start}

        for clip_id, path in clips:  # warm-up: first-call costs of MediaPipe, torch, decord
            extract(clip_id, path)
            decode_floor(path, options.frames)
        for r in range(args.rounds):
            for clip_id, path in clips:
                cpu_start = time.process_time()
                times["floor"][clip_id].append(timed(decode_floor, path, options.frames))
                cpu_mid = time.process_time()
                start = time.perf_counter()
                stages = extract(clip_id, path)
                times["extract"][clip_id].append(time.perf_counter() - start)
                cpu["extract"][r] += time.process_time() - cpu_mid
                cpu["floor"][r] += cpu_mid - cpu_start
                for name in columns:
                    stage_s[clip_id][name].append(stages.get(name, 0.0))
    extractor.close()
    single_rss = peak_rss_mb()

    print("seconds per clip, mean over rounds (the stages add up to the extraction time)")
    print(f"{'clip':<10}" + "".join(f"{name:>9}" for name in columns) + f"{'extract':>9}{'floor':>9}{'ratio':>7}")
    for clip_id, _ in clips:
        ext, flo = np.mean(times["extract"][clip_id]), np.mean(times["floor"][clip_id])
        print(f"{clip_id:<10}" + "".join(f"{np.mean(stage_s[clip_id][n]):>9.3f}" for n in columns)
              + f"{ext:>9.3f}{flo:>9.3f}{ext / flo:>7.2f}")
    mean_stage = {n: np.mean([np.mean(stage_s[c][n]) for c, _ in clips]) for n in columns}
    mean_extract = float(np.mean([np.mean(v) for v in times["extract"].values()]))
    mean_floor = float(np.mean([np.mean(v) for v in times["floor"].values()]))
    print(f"{'mean':<10}" + "".join(f"{mean_stage[n]:>9.3f}" for n in columns)
          + f"{mean_extract:>9.3f}{mean_floor:>9.3f}{mean_extract / mean_floor:>7.2f}")
    print(f"({args.rounds} rounds; {options_text(options)})")
    print(f"mean face rate {np.mean([r[0] for r in rates.values()]):.3f}, "
          f"mean pose rate {np.mean([r[1] for r in rates.values()]):.3f}")

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

    per_round = [sum(times["extract"][c][r] for c, _ in clips) / sum(times["floor"][c][r] for c, _ in clips)
                 for r in range(args.rounds)]
    print_ratios(per_round, [e / f for e, f in zip(cpu["extract"], cpu["floor"])])
    return float(np.median(per_round))


def print_ratios(wall: list[float], cpu: list[float]) -> None:
    """Per-round ratios; on a machine shared with other jobs the CPU-time ratio is the steadier one."""
    print("ratio per round: " + ", ".join(f"{r:.2f}" for r in wall))
    print("CPU-time ratio per round: " + ", ".join(f"{r:.2f}" for r in cpu) + f" (median {np.median(cpu):.2f})")


# -- whole process: the CLI as users run it -----------------------------------------------------------
def bench_cli(clips: list[tuple[str, Path]], options: ExtractOptions, args) -> float:
    limit_threads()  # the floor in this process: one core, as a worker
    with tempfile.TemporaryDirectory() as tmp:
        once, twice = Path(tmp) / "once", Path(tmp) / "twice"
        once.mkdir()
        twice.mkdir()
        for clip_id, path in clips:
            (once / path.name).symlink_to(path.resolve())
            for k in range(2):
                (twice / f"{clip_id}_{k}{path.suffix}").symlink_to(path.resolve())

        def cli(folder: Path, run: int) -> tuple[float, float, str]:
            command = [sys.executable, str(REPO / "preprocess" / "extract.py"), "--clips-dir", str(folder),
                       "--out", str(Path(tmp) / f"store_{folder.name}_{run}"), "--workers", "1",
                       "--assets-dir", str(args.assets_dir), "--no-progress"]
            start, cpu_start = time.perf_counter(), children_cpu_s()
            done = subprocess.run(command, capture_output=True, text=True)
            elapsed, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu_start
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
            return elapsed, cpu_s, done.stdout

        for _, path in clips:  # warm-up: page cache and decord's first-call costs for the floor
            decode_floor(path, options.frames)
        cli(once, -1)  # warm-up: page cache for the interpreter, libraries and models
        ratios, cpu_ratios, printed = [], [], ""
        print(f"{'round':<7}{'t once':>8}{'t twice':>9}{'per clip':>10}{'floor':>8}{'ratio':>7}")
        for r in range(args.rounds):
            cpu_start = time.process_time()
            floor = np.mean([timed(decode_floor, path, options.frames) for _, path in clips])
            floor_cpu = (time.process_time() - cpu_start) / len(clips)
            t, cpu = {}, {}
            for folder in ((once, twice) if r % 2 == 0 else (twice, once)):  # alternate the order
                t[folder], cpu[folder], printed = cli(folder, r)
            per_clip = (t[twice] - t[once]) / len(clips)
            ratios.append(per_clip / floor)
            cpu_ratios.append((cpu[twice] - cpu[once]) / len(clips) / floor_cpu)
            print(f"{r:<7}{t[once]:>8.2f}{t[twice]:>9.2f}{per_clip:>10.3f}{floor:>8.3f}{ratios[-1]:>7.2f}")
    print(f"({args.rounds} rounds; CLI defaults, {options_text(options)}; "
          f"{len(clips)} clips x2 minus x1, each into a fresh store)")
    rate_line = [line for line in printed.splitlines() if line.startswith("mean face rate")]
    print(rate_line[0] if rate_line else "no rates printed")
    print_ratios(ratios, cpu_ratios)
    return float(np.median(ratios))


def options_text(options: ExtractOptions) -> str:
    return (f"T={options.frames}, face {options.face_model}, pose {options.pose_model}, "
            f"detect at {options.detect_max_side} px")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips-dir", type=Path, default=SHARED / "data" / "clips" / "dfew_samples")
    parser.add_argument("--assets-dir", type=Path, default=SHARED / "assets" / "mediapipe")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--cli", action="store_true",
                        help="time the whole CLI process instead (the clips twice minus once)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the CLI processes: one core per worker

    clips = sorted(list_clips(clips_dir=args.clips_dir).items())
    options = ExtractOptions()  # the CLI defaults: no hand-picked settings
    ratio = bench_cli(clips, options, args) if args.cli else bench_in_process(clips, options, args)
    print(f"ratio extraction/floor: {ratio:.2f} (median of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
