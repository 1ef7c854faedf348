"""Synthetic low light: one model of a dim scene seen by a camera, for whole frames and for face crops.

It is applied at two places (the darkening *kinds*):

- **scene level** (`dfew_mm extract --darken S`): every decoded frame is darkened at full resolution
  before face detection and pose (`darken_frames`), so detections fail, boxes and keypoints degrade
  and crops are cut from dark frames, as in a real dark scene. The soundtrack is left as it is.
- **crop level** (`dfew_mm evaluate --darken S`): the stored face crops are darkened at evaluation
  time (`Darken`); a fast approximation that leaves detection, boxes and pose untouched.

The model at strength s in 0..1 (0 leaves the pixels unchanged, 1 is a very dark, noisy capture;
close to the low-light clips of the synthetic data set):

    exposure gain   g = 1 - s (1 - MIN_GAIN)              10% of the light at s = 1
    tone curve      m = 255 g (x / 255) ** (1 + s (MAX_GAMMA - 1))   grey levels, x the input 0..255
    shot noise      n ~ Poisson(m / e) photo-electrons,  e = s SHOT_LEVELS_PER_ELECTRON grey levels each
    read noise      r ~ Normal(0, (s READ_NOISE_LEVELS)^2) grey levels
    output          clip(round(e n + r), 0, 255)

Both noises scale with the strength because a camera amplifies the sensor signal more in a darker
scene, so each grey level stands for fewer photo-electrons; shot noise grows with the signal, read
noise does not (at s = 1 a lit skin tone gets 6-7 grey levels of noise).

**Sampling.** The output of a pixel depends only on its input value and the random draws. For each
strength the exact distribution of the output level (0..255) given each of the 256 input values is
computed once (`output_distribution`: the Poisson count convolved with the rounded, clipped Gaussian;
above POISSON_EXACT_MAX expected electrons the Poisson count is replaced by a Gaussian of the same
mean and variance, whose skewness 1/sqrt(1000) = 0.03 is far below a grey level), and kept as a
table of QUANTILES quantiles per input value. Each pixel then reads its output from the table with
one uniform random integer: same distribution up to the quantile resolution (the outermost 1/2048
of each tail, beyond about 3.3 standard deviations, folds into the outermost quantile; the variance
is within 0.5%), at about 45 ms per 1080p frame (0.7 s for the 16 frames of a 1080p clip) on one
shared core, 14x faster than drawing Poisson and Gaussian numbers per pixel and about two thirds of
the time decord takes to decode those frames (`benchmarks/darken_bench.py`). Frames are darkened in
place, in blocks, so a worker holds no float copy of a 1080p clip.

**Reproducibility.** A scene-darkened store draws each clip's noise from `clip_rng(clip_id, seed)`:
the same clip, strength and seed give the same pixels, in any worker and any order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# At strength 1 the perturbation roughly matches a dim indoor scene shot without extra light:
# 10% exposure, shadows crushed by a gamma of 1.5, and 6-7 grey levels of sensor noise on a lit
# skin tone, close to the low-light clips of the synthetic data set.
MIN_GAIN = 0.10  # exposure gain at strength 1
MAX_GAMMA = 1.5  # tone-curve exponent at strength 1 (> 1 darkens the mid-tones)
SHOT_LEVELS_PER_ELECTRON = 2.0  # at strength 1: grey levels per photo-electron (shot-noise scale)
READ_NOISE_LEVELS = 4.0  # at strength 1: read-noise std in grey levels

LEVELS = 256  # 8-bit input and output values
QUANTILE_BITS = 10
QUANTILES = 1 << QUANTILE_BITS  # table entries per input value: one 10-bit random number per pixel
POISSON_EXACT_MAX = 1000.0  # expected electrons up to which the Poisson count is summed exactly
BLOCK = 1 << 22  # values darkened per step (bounds the temporary index and random arrays to 24 MB)


def check_strength(strength: float) -> float:
    """`strength` as a float in 0..1, else ValueError."""
    value = float(strength)
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"darkening strength {strength} must be between 0 and 1")
    return value


def model_parameters(strength: float) -> dict[str, float]:
    """gain, gamma, grey levels per electron and read-noise std (grey levels) at `strength`."""
    s = check_strength(strength)
    return {"gain": 1.0 - s * (1.0 - MIN_GAIN), "gamma": 1.0 + s * (MAX_GAMMA - 1.0),
            "levels_per_electron": s * SHOT_LEVELS_PER_ELECTRON, "read_noise": s * READ_NOISE_LEVELS}


def output_distribution(strength: float) -> np.ndarray:
    """(256, 256) float64: row x is the distribution of the output level given input value x."""
    from scipy.special import ndtr
    from scipy.stats import poisson

    p = model_parameters(strength)
    if strength == 0:
        return np.eye(LEVELS)
    e, read = p["levels_per_electron"], p["read_noise"]
    mean = 255.0 * p["gain"] * (np.arange(LEVELS) / 255.0) ** p["gamma"]  # (256,) noise-free grey levels
    edges = np.arange(LEVELS + 1) - 0.5  # rounding bins of the output levels; the outer ones catch the clipping
    edges[0], edges[-1] = -np.inf, np.inf
    pmf = np.empty((LEVELS, LEVELS))
    electrons = mean / e
    exact = electrons <= POISSON_EXACT_MAX
    if exact.any():
        top = electrons[exact].max()
        counts = np.arange(int(top + 12 * math.sqrt(top) + 30))  # (N,) all but ~1e-20 of the mass
        weights = poisson.pmf(counts[None, :], electrons[exact, None])  # (x, N)
        weights /= weights.sum(axis=1, keepdims=True)
        given_count = np.diff(ndtr((edges[None, :] - e * counts[:, None]) / read), axis=1)  # (N, 256)
        pmf[exact] = weights @ given_count
    if not exact.all():
        sd = np.sqrt(e * mean[~exact] + read**2)  # Poisson variance e * m in grey levels, plus read noise
        pmf[~exact] = np.diff(ndtr((edges[None, :] - mean[~exact, None]) / sd[:, None]), axis=1)
    return pmf / pmf.sum(axis=1, keepdims=True)


@lru_cache(maxsize=16)
def quantile_table(strength: float) -> np.ndarray:
    """(256 * QUANTILES,) uint8: entry x * QUANTILES + j is the (j + 1/2) / QUANTILES quantile of the
    output level given input value x (read-only; a few ms to build, cached per strength)."""
    cdf = np.cumsum(output_distribution(strength), axis=1)  # (256, 256)
    q = (np.arange(QUANTILES) + 0.5) / QUANTILES
    table = np.stack([np.searchsorted(row, q, side="left") for row in cdf])  # first level whose cdf reaches q
    table = np.minimum(table, LEVELS - 1).astype(np.uint8).reshape(-1)
    table.flags.writeable = False
    return table


def darken_inplace(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Darken uint8 RGB images of any shape (..., 3) in place (full frames or face crops); returns them.

    Strength 0 leaves them unchanged and draws nothing from `rng`.
    """
    strength = check_strength(strength)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if strength == 0.0 or images.size == 0:
        return images
    if not images.flags.c_contiguous or not images.flags.writeable:
        raise ValueError("darken_inplace needs a writeable C-contiguous array; use darken() for a copy")
    table = quantile_table(strength)
    flat = images.reshape(-1)  # a view: contiguous
    for start in range(0, flat.size, BLOCK):
        part = flat[start:start + BLOCK]
        index = np.left_shift(part, QUANTILE_BITS, dtype=np.uint32)  # input value x in the high bits
        uniform = rng.bit_generator.random_raw((part.size + 3) // 4).view(np.uint16)[:part.size]  # 4 per draw
        np.bitwise_and(uniform, QUANTILES - 1, out=uniform)  # uniform 0..QUANTILES-1
        np.bitwise_or(index, uniform, out=index)
        np.take(table, index, out=part)
    return images


def darken(images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A darkened copy of uint8 RGB images (..., 3): face crops (T, S, S, 3) or frames (T, H, W, 3)."""
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    return darken_inplace(np.array(images, order="C", copy=True), strength, rng)


def darken_frames(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Scene level: darken decoded frames (T, H, W, 3) at full resolution, in place where possible."""
    if strength == 0:
        return frames
    if frames.flags.c_contiguous and frames.flags.writeable:
        return darken_inplace(frames, strength, rng)
    return darken(frames, strength, rng)


def clip_rng(clip_id: str, seed: int = 0) -> np.random.Generator:
    """The noise generator of one clip: the same (clip id, seed) gives the same draws in any process."""
    digest = hashlib.sha256(str(clip_id).encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


@dataclass(frozen=True)
class Darken:
    """Crop level: `darken` at a fixed strength as a dataset array transform of the faces (picklable)."""

    strength: float

    def __call__(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return darken(faces, self.strength, rng)
