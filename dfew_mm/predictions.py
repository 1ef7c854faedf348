"""The predictions file: one row per clip and evaluation pass, written by `dfew_mm evaluate` (and by
training for its test fold), read by the analysis notebook.

Columns (`prediction_columns(classes)`; PREDICTION_COLUMNS for the default dataset): the true and
predicted class, one probability column `prob_<class>` per class of the dataset in its label order
(the file names its classes this way: `classes_of`), the modalities the model was allowed to use, the
perturbation applied, the run, and the quality columns of the feature store manifest, so that the
notebook can slice results by brightness without opening the store again. A metrics JSON with the
same stem sits beside it (`preds.csv` -> `preds.metrics.json`), with the dataset and its `classes`.

The perturbation of a pass (dfew_mm.lowlight), in three columns that always agree:

    kind    what was darkened                                     perturbation   darken  darken_kind
    none    nothing                                               none           0       none
    crop    the stored face crops, at evaluation (--darken S)     darken:S       S       crop
    scene   the full frames before detection, at extraction       scene:S        S       scene
            (the store was extracted with --darken S)

Crop level is a fast approximation that leaves detection, boxes and pose untouched; scene level
re-runs detection on dark frames, so its quality columns (face_rate, pose_rate, luma) are those of
the darkened frames. Files written before `darken_kind` existed hold only `none` and crop-level
passes; `upgrade_predictions` adds the column when they are read.
With `dfew_mm evaluate --attribution` the file has RELIANCE_COLUMNS after these: per clip and
pass, `reliance_<modality>` = p(predicted class | all evaluated modalities) - p(predicted class |
the same modalities but that one masked out), for each evaluated modality; empty (NaN) for the
modalities the pass did not use. Positive: removing the modality lowers the model's confidence in
its own answer, i.e. the prediction leaned on it; near 0: the modality did not matter for this clip;
negative: the modality argued against the answer the others carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.datasets import default_classes
from dfew_mm.models.encoders import ENCODERS

PROB_PREFIX = "prob_"
QUALITY_COLUMNS = ("luma_mean", "face_luma_mean", "face_rate", "pose_rate", "has_audio")
RELIANCE_COLUMNS = tuple(f"reliance_{m}" for m in ENCODERS)  # optional: `evaluate --attribution`
PASS_COLUMNS = ("label_name", "pred_name", "modalities", "perturbation", "darken", "darken_kind", "run",
                "trained_modalities", "fold", "split")


def prob_columns(classes: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{PROB_PREFIX}{c}" for c in classes)


def prediction_columns(classes: Sequence[str]) -> tuple[str, ...]:
    """The columns of a predictions file of a dataset with these classes, in order."""
    return ("clip_id", "label", "pred", "correct") + prob_columns(classes) + PASS_COLUMNS + QUALITY_COLUMNS


def classes_of(frame: pd.DataFrame) -> tuple[str, ...]:
    """The class names of a predictions frame, from its probability columns (in label order)."""
    return tuple(c[len(PROB_PREFIX):] for c in frame.columns if str(c).startswith(PROB_PREFIX))


PROB_COLUMNS = prob_columns(default_classes())  # the default dataset's, as files before other datasets had them
PREDICTION_COLUMNS = prediction_columns(default_classes())
DARKEN_KINDS = ("none", "crop", "scene")
_PREFIX = {"crop": "darken", "scene": "scene"}  # perturbation label prefix of each darkening kind


def modality_label(modalities: Sequence[str]) -> str:
    return "+".join(m for m in ENCODERS if m in modalities)  # in the registry's order


def perturbation_label(strength: float, kind: str = "crop") -> str:
    """0 -> 'none'; crop level -> 'darken:0.5' (the label older files use); scene level -> 'scene:0.5'."""
    if kind not in _PREFIX:
        raise ValueError(f"darkening kind {kind!r}: choose {', '.join(_PREFIX)}")
    return "none" if strength == 0 else f"{_PREFIX[kind]}:{strength:g}"


def perturbation_kind(label: str) -> str:
    """'none' -> 'none', 'darken:0.5' -> 'crop', 'scene:0.5' -> 'scene'."""
    prefix = str(label).split(":", 1)[0]
    kinds = {"none": "none", **{p: k for k, p in _PREFIX.items()}}
    if prefix not in kinds:
        raise ValueError(f"perturbation {label!r} is none, darken:S or scene:S")
    return kinds[prefix]


def upgrade_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """A predictions frame read from a file, with columns added since it was written (`darken_kind`)."""
    if "darken_kind" not in frame.columns and "perturbation" in frame.columns:
        frame = frame.copy()
        after = "darken" if "darken" in frame.columns else "perturbation"
        frame.insert(int(frame.columns.get_loc(after)) + 1, "darken_kind",
                     [perturbation_kind(p) for p in frame["perturbation"]])
    return frame


def run_name(checkpoint: str | Path) -> str:
    """A checkpoint is named after its run directory: runs/video_f1/best.pt -> video_f1."""
    return Path(checkpoint).resolve().parent.name


def metrics_path_for(out_csv: str | Path) -> Path:
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + ".metrics.json")


def prediction_frame(clip_ids: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                     manifest: pd.DataFrame, classes: Sequence[str] | None = None, **constants) -> pd.DataFrame:
    """Rows of the predictions file for one pass; `probs` (N, C) over `classes` (default: the default
    dataset's), `constants` fill whole columns (columns beyond the file's columns come last)."""
    classes = tuple(classes) if classes is not None else default_classes()
    if probs.shape[1] != len(classes):
        raise ValueError(f"probabilities of {probs.shape[1]} classes for {len(classes)} class names")
    columns = prediction_columns(classes)
    pred = probs.argmax(axis=1)
    frame = pd.DataFrame({"clip_id": [str(c) for c in clip_ids], "label": labels.astype(int),
                          "pred": pred.astype(int)})
    frame["correct"] = (frame["label"] == frame["pred"]).astype(int)
    for j, column in enumerate(prob_columns(classes)):
        frame[column] = probs[:, j].astype(np.float64)
    frame["label_name"] = [classes[i] for i in frame["label"]]
    frame["pred_name"] = [classes[i] for i in frame["pred"]]
    for key, value in constants.items():
        frame[key] = value
    if "perturbation" in constants and "darken_kind" not in constants:
        frame["darken_kind"] = perturbation_kind(constants["perturbation"])
    quality = manifest.set_index("clip_id")[list(QUALITY_COLUMNS)]
    frame = frame.join(quality, on="clip_id")
    extra = [c for c in frame.columns if c not in columns]  # e.g. reliance_*, `checkpoint`, after the contract
    return frame[[c for c in columns if c in frame.columns] + extra]
