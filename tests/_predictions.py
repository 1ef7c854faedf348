"""Hand-made prediction files (no model needed) for the analysis and notebook tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dfew_mm.predictions import metrics_path_for, perturbation_label, prediction_frame

IDS = [str(i) for i in range(1, 9)]
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
# four dark clips (the first without a detected face) and four bright ones
MANIFEST = pd.DataFrame({"clip_id": IDS, "luma_mean": [10, 20, 30, 40, 150, 160, 170, 180.0],
                         "face_luma_mean": [np.nan, 25, 35, 45, 155, 165, 175, 185],
                         "face_rate": 1.0, "pose_rate": 1.0, "has_audio": True})
# the same clips extracted from darkened frames: darker, faces and bodies found less often
DARK_MANIFEST = MANIFEST.assign(luma_mean=MANIFEST["luma_mean"] / 10, face_luma_mean=MANIFEST["face_luma_mean"] / 10,
                                face_rate=[0.0, 0.25, 0.5, 0.5, 1.0, 1.0, 0.75, 0.5], pose_rate=0.25)


def write_pass(folder: Path, name: str, preds: np.ndarray, modalities: str, trained: str, strength: float = 0.0,
               kind: str = "crop", manifest: pd.DataFrame = MANIFEST, store: str | Path = "") -> Path:
    """One pass of `name` as `dfew_mm evaluate` writes it: predictions CSV and metrics JSON."""
    perturbation = perturbation_label(strength, kind)
    frame = prediction_frame(IDS, LABELS, np.eye(7)[preds], manifest, modalities=modalities,
                             perturbation=perturbation, darken=strength, run=name, trained_modalities=trained,
                             fold=1, split="test")
    path = folder / f"{name}_{modalities}_{perturbation.replace(':', '')}.csv"
    frame.to_csv(path, index=False)
    scene = strength if kind == "scene" else 0.0
    metrics_path_for(path).write_text(json.dumps({"store": str(store), "scene_darken": scene}))
    return path


def write_both_kinds(folder: Path, store: str | Path = "", dark_store: str | Path = "",
                     kinds: tuple[str, ...] = ("crop", "scene")) -> Path:
    """A face-only and a fused model: unperturbed, crop-level and scene-level passes at strength 1.
    Crop level leaves both right; at scene level the face-only model is wrong on every clip."""
    right, wrong = LABELS, (LABELS + 1) % 7
    for name, mods in (("video", "video"), ("fused", "video+pose+audio")):
        write_pass(folder, name, right, mods, mods, store=store)
        if "crop" in kinds:
            write_pass(folder, name, right, mods, mods, 1.0, "crop", store=store)
        if "scene" in kinds:
            write_pass(folder, name, wrong if name == "video" else right, mods, mods, 1.0, "scene", DARK_MANIFEST,
                       dark_store)
    return folder
