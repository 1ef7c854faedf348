"""Per-clip quality statistics for later analysis (e.g. low-light clips, silent clips)."""

from __future__ import annotations

import cv2
import numpy as np

from dfew_mm.constants import LUMA_WEIGHTS

_SILENCE_DB = -120.0  # floor for digital silence, dBFS


def frame_luma(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T,) float32 mean BT.601 luma in 0..255."""
    channel_means = np.array([cv2.mean(frame)[:3] for frame in frames]).reshape(-1, 3)  # (T, 3), fast SIMD means
    return (channel_means @ np.asarray(LUMA_WEIGHTS)).astype(np.float32)


def masked_mean_luma(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean luma over the frames where mask is true; NaN when none."""
    return float(frame_luma(frames[mask]).mean()) if mask.any() else float("nan")


def rms_db(samples: np.ndarray) -> float:
    """RMS level of a [-1, 1] waveform in dBFS; NaN without audio."""
    if samples.size == 0:
        return float("nan")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(20.0 * np.log10(rms), _SILENCE_DB) if rms > 0 else _SILENCE_DB
