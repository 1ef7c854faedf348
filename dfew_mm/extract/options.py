"""Extraction settings: what changes the stored features (saved with the store, checked on resume).

Kept free of heavy imports: the command line reads its defaults from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dfew_mm.constants import (DEFAULT_FACE_SIZE, DEFAULT_FRAMES, FACE_SOURCE_DETECT, MAX_FACE_SIZE, MAX_FRAMES,
                               MIN_FACE_SIZE)

# Settings added after stores were first written: what a saved settings file without them meant.
ABSENT_SETTINGS = {"darken": 0.0, "darken_seed": 0, "store_format": 1, "extractor_version": 1,
                   "face_source": FACE_SOURCE_DETECT}
FACE_MODELS = ("auto", "short_range", "full_range")  # auto: both, the better track per clip
# A run setting, not a feature setting (not saved with the store): seconds one clip may take before
# its worker process is stopped and the clip recorded as failed. A DFEW clip takes about 1 s per
# core at T=16; the limit catches hangs, not slow clips.
DEFAULT_CLIP_TIMEOUT_S = 300.0
POSE_MODELS = ("full", "lite")


@dataclass(frozen=True)
class ExtractOptions:
    """Settings that change the stored features (saved with the store, checked on resume)."""

    frames: int = DEFAULT_FRAMES  # T, frames sampled uniformly per clip
    # where faces come from: detected in the original clips, or a face frame folder the dataset
    # distributes (its name, e.g. DFEW's clip_224x224; dfew_mm.extract.face_frames), which needs no detector
    face_source: str = FACE_SOURCE_DETECT
    face_size: int = DEFAULT_FACE_SIZE  # S, px
    face_margin: float = 0.25  # crop side = longer face-box side x (1 + margin)
    face_model: str = "auto"  # short-range BlazeFace, the full-range one where it misses (FACE_MODELS)
    pose_model: str = "full"
    blendshapes: bool = False  # also store FaceLandmarker blendshapes (T, 52)
    detect_max_side: int = 640  # px, frames are downscaled to this before detection
    face_confidence: float = 0.4  # face detection score threshold (the track then drops strays)
    pose_confidence: float = 0.5  # pose detection, presence and tracking threshold
    # Scene-level low light (dfew_mm.lowlight): strength 0..1 applied to the full decoded frames
    # before detection (0 = off), with each clip's noise drawn from (darken_seed, clip id).
    darken: float = 0.0
    darken_seed: int = 0

    def __post_init__(self):
        if not 1 <= self.frames <= MAX_FRAMES:
            raise ValueError(f"frames={self.frames}: choose 1..{MAX_FRAMES} frames per clip (each worker holds "
                             "that many decoded frames: 3.2 GB at 512 frames of 1080p video)")
        if not MIN_FACE_SIZE <= self.face_size <= MAX_FACE_SIZE:
            raise ValueError(f"face_size={self.face_size}: choose {MIN_FACE_SIZE}..{MAX_FACE_SIZE} px")
        if not 64 <= self.detect_max_side <= 4096:
            raise ValueError(f"detect_max_side={self.detect_max_side}: choose 64..4096 px")
        for name in ("face_margin", "face_confidence", "pose_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= (4.0 if name == "face_margin" else 1.0):
                raise ValueError(f"{name}={value} is out of range")
        if not 0.0 <= self.darken <= 1.0:  # also false for NaN
            raise ValueError(f"darken={self.darken}: the darkening strength must be between 0 and 1 (0 = off)")
        if self.darken_seed < 0:
            raise ValueError(f"darken_seed={self.darken_seed}: the seed must be 0 or more")
        if not (self.face_source.isascii() and self.face_source.replace("_", "").isalnum()):
            raise ValueError(f"face_source {self.face_source!r}: {FACE_SOURCE_DETECT} or the name of a face frame "
                             "folder of the dataset (letters, digits, _)")
        if self.face_model not in FACE_MODELS:
            raise ValueError(f"face_model '{self.face_model}' unknown; choose from {FACE_MODELS}")
        if self.pose_model not in POSE_MODELS:
            raise ValueError(f"pose_model '{self.pose_model}' unknown; choose from {POSE_MODELS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_keys(self) -> list[str]:
        return self.face_detector_keys() + [f"pose_landmarker_{self.pose_model}"] + (
            ["face_landmarker"] if self.blendshapes else [])

    def face_detector_keys(self) -> list[str]:
        """The face detectors to load: none when the faces come from a dataset's face frames."""
        if self.face_source != FACE_SOURCE_DETECT:
            return []
        names = ("short_range", "full_range") if self.face_model == "auto" else (self.face_model,)
        return [f"face_detector_{name}" for name in names]
