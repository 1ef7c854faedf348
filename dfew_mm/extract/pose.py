"""Body pose with MediaPipe PoseLandmarker (33 landmarks x, y, z, visibility) on the sampled frames.

The landmarker runs in VIDEO mode, so within a clip it tracks the body from frame to frame instead
of re-running its person detector on every frame (faster, steadier). One landmarker serves all
clips of a worker: a blank frame between clips drops the previous clip's track.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfew_mm.constants import N_POSE_LANDMARKS, POSE_CHANNELS
from dfew_mm.extract.images import to_mp_image

_CLIP_GAP_MS = 10_000  # timestamp gap between clips; VIDEO mode needs increasing timestamps
_BLANK = np.zeros((64, 64, 3), np.uint8)


class PoseEstimator:
    def __init__(self, model_path: Path, min_confidence: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO, num_poses=1,
            min_pose_detection_confidence=min_confidence, min_pose_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence)
        self._landmarker = vision.PoseLandmarker.create_from_options(options)
        self._clock_ms = 0

    def estimate(self, images: list, frame_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T frames (RGB mediapipe.Images) and (T,) times in s -> pose (T, 33, 4) float32, mask (T,) bool."""
        t = len(images)
        pose = np.zeros((t, N_POSE_LANDMARKS, POSE_CHANNELS), np.float32)
        mask = np.zeros(t, bool)
        self._reset()
        start = self._clock_ms
        for i, image in enumerate(images):
            # Timestamps follow the clip but must strictly increase (repeated frames in short clips).
            stamp = max(start + int(round(float(frame_time[i]) * 1000)), self._clock_ms + 1)
            self._clock_ms = stamp
            result = self._landmarker.detect_for_video(image, stamp)
            if result.pose_landmarks:
                pose[i] = [(p.x, p.y, p.z, p.visibility if p.visibility is not None else 0.0)
                           for p in result.pose_landmarks[0]]
                mask[i] = True
        return pose, mask

    def _reset(self) -> None:
        """Feed a blank frame after a gap: the landmarker loses the old track and re-detects."""
        self._clock_ms += _CLIP_GAP_MS
        self._landmarker.detect_for_video(to_mp_image(_BLANK), self._clock_ms)
        self._clock_ms += _CLIP_GAP_MS

    def close(self) -> None:
        self._landmarker.close()
