"""Frames-only clips: a folder of face frames a dataset distributes (e.g. FERV39k's face crops) in, the
store's arrays out, with no original clip to take pose or audio from.

T frames are sampled uniformly from the folder's images in frame order (dfew_mm.datasets.base.frame_files)
and resized to the store's face size; no face detection runs. `face_mask` is true where a frame could be
read and is not blank. Without an original clip there are no time stamps: frames are placed at the
dataset's nominal frame rate. Pose, audio and the waveform are stored empty (all-false masks, zero
filterbank frames), and the record says so, so that training such a store on pose or audio stops with
that reason (dfew_mm.data.splits.check_inputs_present).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dfew_mm.constants import N_MELS, N_POSE_LANDMARKS, POSE_CHANNELS, WAVEFORM_ARRAY
from dfew_mm.datasets.base import frame_files
from dfew_mm.extract.decode import DecodeError, sample_indices
from dfew_mm.extract.quality import frame_luma, masked_mean_luma

log = logging.getLogger(__name__)
BLANK_STD = 2.0  # grey levels: a frame this flat holds no face (an empty padding frame)


def read_frame(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """((S, S, 3) uint8 RGB of one image resized to `size`, its (height, width)), or None when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (H, W, 3) BGR, None for unreadable files
    if image is None:
        return None
    interp = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_LINEAR
    rgb = cv2.cvtColor(cv2.resize(image, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
    return rgb, image.shape[:2]


def extract_frames(folder: Path, frames: int, size: int, frame_rate: float) -> tuple[dict[str, np.ndarray],
                                                                                    dict[str, Any], list[str]]:
    """(arrays, manifest statistics, notes) of one frames-only clip; DecodeError when the folder has no images."""
    if not folder.is_dir():
        raise DecodeError(f"frame folder not found: {folder}")
    files = frame_files(folder)
    if not files:
        raise DecodeError(f"no image files in frame folder {folder}")
    index = sample_indices(len(files), frames)  # (T,)
    faces = np.zeros((frames, size, size, 3), np.uint8)
    mask = np.zeros(frames, bool)
    shapes, unreadable = set(), []
    for t, i in enumerate(index):
        read = read_frame(files[i], size)
        if read is None:
            unreadable.append(files[i].name)
            continue
        image, shape = read
        shapes.add(shape)
        faces[t] = image
        mask[t] = image.std() > BLANK_STD
    if not mask.any():
        raise DecodeError(f"no readable, non-blank frame among the {frames} sampled from {folder}"
                          + (f" (unreadable: {', '.join(sorted(set(unreadable))[:5])})" if unreadable else ""))
    first = min(shapes)
    arrays = {
        "faces": faces, "face_mask": mask,
        "face_boxes": np.tile(np.array([0, 0, 1, 1], np.float32), (frames, 1)),  # the whole frame is the face
        "pose": np.zeros((frames, N_POSE_LANDMARKS, POSE_CHANNELS), np.float32), "pose_mask": np.zeros(frames, bool),
        "audio": np.zeros((0, N_MELS), np.float16),
        "frame_index": index.astype(np.int32), "frame_time": (index / frame_rate).astype(np.float32),
        "luma": frame_luma(faces), WAVEFORM_ARRAY: np.zeros(0, np.int16),
    }
    notes = [f"faces from the {len(files)} frames of {folder.name}; no original clip: no pose, no audio"]
    if unreadable:
        notes.append(f"{len(set(unreadable))} unreadable frames ({', '.join(sorted(set(unreadable))[:3])})")
    if len(shapes) > 1:
        notes.append("frames of different sizes, all resized")
    if len(files) < frames:
        notes.append(f"short clip: {len(files)} frames < {frames}, frames repeated")
    stats = {
        "n_frames": len(files), "fps": frame_rate, "duration_s": round(len(files) / frame_rate, 3),
        "width": int(first[1]), "height": int(first[0]),
        "face_rate": round(float(mask.mean()), 4), "pose_rate": 0.0, "has_audio": False,
        "audio_rms_db": float("nan"), "luma_mean": round(float(arrays["luma"].mean()), 3),
        "face_luma_mean": round(masked_mean_luma(faces, mask), 3),
    }
    return arrays, stats, notes
