"""Body pose with MediaPipe PoseLandmarker (33 landmarks x, y, z, visibility) on the sampled frames.

The landmarker runs in VIDEO mode, so within a clip it tracks the body from frame to frame instead
of re-running its person detector on every frame (faster, steadier). Each clip gets a landmarker of
its own: VIDEO mode also smooths landmarks and visibilities over time, and no input resets all of
that state (a blank frame between clips drops the track and resets x, y, z, but the visibility
filter carried the previous clip's values into the next clip's first ~16 frames). A fresh
landmarker per clip costs its creation (about 0.1 s, docs/reproducibility.md) and makes a clip's
pose depend on that clip alone: the same arrays in any order, worker, shard, resume or `predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfew_mm.constants import N_POSE_LANDMARKS, POSE_CHANNELS


class PoseEstimator:
    def __init__(self, model_path: Path, min_confidence: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        self._options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO, num_poses=1,
            min_pose_detection_confidence=min_confidence, min_pose_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence)
        self._create = vision.PoseLandmarker.create_from_options
        self._create(self._options).close()  # a model file that does not load fails here, not at the first clip

    def estimate(self, images: list, frame_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T frames (RGB mediapipe.Images) and (T,) times in s -> pose (T, 33, 4) float32, mask (T,) bool."""
        t = len(images)
        pose = np.zeros((t, N_POSE_LANDMARKS, POSE_CHANNELS), np.float32)
        mask = np.zeros(t, bool)
        clock_ms = -1
        with self._create(self._options) as landmarker:  # a clean state for every clip (module docstring)
            for i, image in enumerate(images):
                # Timestamps follow the clip but must strictly increase (repeated frames in short clips).
                clock_ms = max(int(round(float(frame_time[i]) * 1000)), clock_ms + 1)
                result = landmarker.detect_for_video(image, clock_ms)
                if result.pose_landmarks:
                    pose[i] = [(p.x, p.y, p.z, p.visibility if p.visibility is not None else 0.0)
                               for p in result.pose_landmarks[0]]
                    mask[i] = True
        return pose, mask

    def close(self) -> None:
        """Nothing held between clips; kept so that every estimator closes alike."""
