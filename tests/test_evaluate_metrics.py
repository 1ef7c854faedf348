"""classification_metrics against hand-computed values and scikit-learn's balanced accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from dfew_mm.datasets.dfew import CLASSES
from dfew_mm.metrics import classification_metrics, format_metrics


def test_hand_computed_values():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 2, 2, 0, 0]
    m = classification_metrics(y_true, y_pred)
    assert m["n"] == 10 and m["classes_present"] == 3
    assert m["war"] == pytest.approx(6 / 10)
    assert m["per_class_recall"]["happy"] == pytest.approx(3 / 4)
    assert m["per_class_recall"]["sad"] == pytest.approx(1 / 2)
    assert m["per_class_recall"]["neutral"] == pytest.approx(2 / 4)
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 4) / 3)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert math.isnan(m["per_class_recall"]["fear"])
    assert list(m["per_class_recall"]) == list(CLASSES)
    confusion = np.array(m["confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 10
    assert confusion[0, 0] == 3 and confusion[2, 0] == 2 and confusion[1, 0] == 1
    assert "UAR  58.3" in format_metrics(m)


def test_matches_balanced_accuracy_when_all_classes_present():
    rng = np.random.default_rng(0)
    y_true = np.concatenate([np.arange(7), rng.integers(0, 7, 200)])
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, 7, y_true.size))
    m = classification_metrics(y_true, y_pred)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["classes_present"] == 7


def test_prediction_of_absent_class_counts_as_error():
    m = classification_metrics([0, 0], [0, 6])
    assert m["uar"] == pytest.approx(0.5) and m["war"] == pytest.approx(0.5)
    assert m["confusion"][0][6] == 1


def test_empty_and_invalid_input():
    empty = classification_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["uar"])
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 7], [0, 0])
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], [0])


def test_metrics_by_pass_adds_intervals_and_keeps_keys():
    import json

    import pandas as pd

    from dfew_mm.evaluate import interval_settings, metrics_by_pass
    from dfew_mm.metrics import json_safe

    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    frame = pd.DataFrame({"run": "r", "modalities": "video", "perturbation": ["none"] * 10 + ["darken:1"] * 10,
                          "darken": [0.0] * 10 + [1.0] * 10, "label": labels * 2,
                          "pred": [0, 0, 0, 1, 1, 0, 2, 2, 0, 0] + [0] * 10})
    passes = metrics_by_pass(frame)
    assert [p["perturbation"] for p in passes] == ["none", "darken:1"]
    plain = classification_metrics(labels, [0, 0, 0, 1, 1, 0, 2, 2, 0, 0])
    assert json_safe({k: passes[0][k] for k in plain}) == json_safe(plain)  # existing keys unchanged
    for p in passes:
        assert p["uar_ci"][0] <= p["uar"] <= p["uar_ci"][1] and p["war_ci"][0] <= p["war"] <= p["war_ci"][1]
    # always "happy": UAR 1/3, and still uncertain with 2-4 clips per class
    assert passes[1]["uar_ci"][0] < 1 / 3 < passes[1]["uar_ci"][1]
    assert "UAR  58.3 [" in format_metrics(passes[0]) and "WAR  60.0 [" in format_metrics(passes[0])
    assert json.loads(json.dumps(json_safe({"intervals": interval_settings(), "passes": passes})))
