"""Classification metrics of the benchmarks' protocols: UAR, WAR, macro F1, per-class recall, confusion.

UAR (unweighted average recall) is the mean of per-class recalls; WAR (weighted average recall)
is plain accuracy. Both come from scikit-learn so that the numbers match what other papers compute.

Classes absent from `y_true` have no defined recall: they are reported as NaN in
`per_class_recall` and left out of the UAR mean (UAR is the mean over the classes present in
`y_true`). This matters for small evaluation subsets such as "low-light clips only", where a
rare class may not occur; counting it as recall 0 would punish the model for a class it never saw.
Predictions of an absent class still count as errors in WAR and appear in the confusion matrix.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dfew_mm.datasets import default_classes


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str] | None = None) -> dict:
    """Metrics for 0-based indices into `classes` (the dataset's class names; default: the default dataset's).

    Returns a JSON-serialisable dict: `uar`, `war`, `macro_f1` (floats, NaN when `n == 0`),
    `per_class_recall` {class name: recall or NaN when the class is absent from y_true},
    `confusion` (C x C list of lists, rows = true class, columns = predicted class, `classes` order),
    `n` (number of samples) and `classes_present` (number of classes occurring in y_true).
    `macro_f1` averages F1 over the classes present in y_true or y_pred.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score  # local: 1.5 s to import

    classes = tuple(classes) if classes is not None else default_classes()
    labels = list(range(len(classes)))
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
            raise ValueError(f"{name} holds labels outside 0..{len(classes) - 1}: {sorted(set(arr.tolist()))}")

    confusion = confusion_matrix(y_true, y_pred, labels=labels) if y_true.size else np.zeros(
        (len(classes), len(classes)), dtype=np.int64)
    if y_true.size == 0:
        nan = float("nan")
        return {"uar": nan, "war": nan, "macro_f1": nan,
                "per_class_recall": {c: nan for c in classes},
                "confusion": confusion.tolist(), "n": 0, "classes_present": 0}

    present = np.isin(labels, y_true)
    # zero_division only affects absent classes, which are then replaced by NaN.
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    recall = np.where(present, recall, np.nan)
    # Over the classes present, this equals sklearn's balanced_accuracy_score.
    uar = float(np.nanmean(recall))
    return {
        "uar": uar,
        "war": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "confusion": confusion.tolist(),
        "n": int(y_true.size),
        "classes_present": int(present.sum()),
    }


def format_metrics(metrics: dict) -> str:
    """One line for logs and CLI output: 'UAR 41.2  WAR 55.0  F1 39.8  (n=2341)'; with the bootstrap
    intervals of `evaluate` (`uar_ci`, `war_ci`): 'UAR 41.2 [39.1, 43.3]  WAR 55.0 [53.0, 57.0]  ...'."""
    def pct(x: float | None) -> str:
        return "  nan" if x is None or math.isnan(x) else f"{100 * x:5.1f}"

    def with_ci(name: str) -> str:
        ci = metrics.get(f"{name}_ci")
        text = pct(metrics[name])
        return text if ci is None else f"{text} [{pct(ci[0]).strip()}, {pct(ci[1]).strip()}]"

    return (f"UAR {with_ci('uar')}  WAR {with_ci('war')}  "
            f"F1 {pct(metrics['macro_f1'])}  (n={metrics['n']})")


def json_safe(value):
    """NaN (undefined recall of an absent class) -> null, so metric files are strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
