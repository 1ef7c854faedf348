"""Optional MediaPipe FaceLandmarker blendshapes (52 action-unit-like scores) on the face crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfew_mm.constants import N_BLENDSHAPES
from dfew_mm.extract.images import to_mp_image


class BlendshapeEstimator:
    def __init__(self, model_path: Path):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=1, output_face_blendshapes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def estimate(self, faces: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
        """(T, S, S, 3) crops -> (T, 52) float32 scores; zeros where no face or no landmarks."""
        scores = np.zeros((len(faces), N_BLENDSHAPES), np.float32)
        for i in np.flatnonzero(face_mask):
            result = self._landmarker.detect(to_mp_image(faces[i]))
            if result.face_blendshapes:
                values = [c.score for c in result.face_blendshapes[0]][:N_BLENDSHAPES]
                scores[i, :len(values)] = values
        return scores

    def close(self) -> None:
        self._landmarker.close()
