"""Frame helpers shared by the detectors: downscaling for detection, MediaPipe image wrapping."""

from __future__ import annotations

import cv2
import numpy as np


def to_mp_image(frame: np.ndarray):
    """Wrap one (H, W, 3) uint8 RGB frame as a mediapipe.Image (needs a contiguous buffer; copies it)."""
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))


def to_mp_images(frames) -> list:
    """T frames (H, W, 3) uint8 RGB -> T mediapipe.Images, made once and shared by the face and pose models."""
    return [to_mp_image(frame) for frame in frames]


def downscale(frames: np.ndarray, max_side: int) -> list[np.ndarray]:
    """(T, H, W, 3) -> T frames (h, w, 3) with max(h, w) <= max_side, aspect kept.

    The detectors resize their input to 128-256 px anyway; handing them 1080p frames only costs
    copies, while face crops are still cut from the full-resolution frames. A list, not a stacked
    array: the frames only go on into mediapipe.Images.
    """
    height, width = frames.shape[1:3]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return list(frames)
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    return [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames]
