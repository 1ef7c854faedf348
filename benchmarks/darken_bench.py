"""Cost of scene-level darkening (`extract --darken`) against a decode floor measured in the same run.

Per DFEW sample clip (T=16 sampled frames at full resolution, one core): decord decoding the
sampled frames (the floor every extraction pays), darkening them with the table sampler of
dfew_mm.lowlight (what `--darken` adds), and the same model drawn per pixel with numpy's Poisson and
Gaussian generators (the reference it replaces). Rounds are interleaved so that machine load
affects all three alike.

    OMP_NUM_THREADS=1 python benchmarks/darken_bench.py --clips-dir ../shared/data/clips/dfew_samples

The last line is the ratio darkening/decode (the share `--darken` adds to the decode floor).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dfew_mm.constants import DEFAULT_FRAMES
from dfew_mm.extract.decode import sample_indices
from dfew_mm.lowlight import clip_rng, darken_frames, model_parameters, quantile_table

REPO = Path(__file__).resolve().parent.parent


def decode(path: Path, t: int) -> np.ndarray:
    from decord import VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    return reader.get_batch(sample_indices(len(reader), t).tolist()).asnumpy()  # (T, H, W, 3)


def per_pixel(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The model drawn per pixel (float32 where it can be), frame by frame."""
    p = model_parameters(strength)
    e = p["levels_per_electron"]
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        levels = np.float32(255 * p["gain"]) * (frame.astype(np.float32) / np.float32(255)) ** np.float32(p["gamma"])
        noisy = rng.poisson(levels / np.float32(e)).astype(np.float32) * np.float32(e)
        noisy += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(p["read_noise"])
        out[t] = np.clip(np.rint(noisy), 0, 255)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-dir", type=Path, default=REPO.parent / "shared" / "data" / "clips" / "dfew_samples")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    paths = sorted(args.clips_dir.glob("*.mp4"))
    if not paths:
        print(f"no clips in {args.clips_dir}", file=sys.stderr)
        return 1
    quantile_table(args.strength)  # built once per strength and process (a few ms)
    times: dict[str, dict[str, list[float]]] = {p.stem: {"decode": [], "darken": [], "per_pixel": []} for p in paths}
    sizes = {}
    for _ in range(args.rounds):
        for path in paths:
            tic = time.perf_counter()
            frames = decode(path, args.frames)
            times[path.stem]["decode"].append(time.perf_counter() - tic)
            sizes[path.stem] = frames.shape
            reference = frames.copy()
            tic = time.perf_counter()
            darken_frames(frames, args.strength, clip_rng(path.stem))
            times[path.stem]["darken"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            per_pixel(reference, args.strength, np.random.default_rng(0))
            times[path.stem]["per_pixel"].append(time.perf_counter() - tic)
    print(f"strength {args.strength:g}, T={args.frames}, median of {args.rounds} rounds, seconds per clip")
    print(f"{'clip':<10} {'frames':>18} {'decode':>8} {'darken':>8} {'per-pixel':>10} {'ms/1080p frame':>15}")
    totals = {"decode": 0.0, "darken": 0.0, "per_pixel": 0.0}
    for name, parts in times.items():
        median = {k: float(np.median(v)) for k, v in parts.items()}
        t, h, w, _ = sizes[name]
        per_frame = 1000 * median["darken"] / t * (1920 * 1080) / (h * w)
        print(f"{name:<10} {f'{t}x{w}x{h}':>18} {median['decode']:8.3f} {median['darken']:8.3f} "
              f"{median['per_pixel']:10.3f} {per_frame:15.1f}")
        for k in totals:
            totals[k] += median[k]
    n = len(times)
    print(f"mean per clip: decode {totals['decode'] / n:.3f} s, darken {totals['darken'] / n:.3f} s, "
          f"per-pixel sampling {totals['per_pixel'] / n:.3f} s ({totals['per_pixel'] / totals['darken']:.1f}x darken)")
    print(f"darkening / decode floor: {totals['darken'] / totals['decode']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
