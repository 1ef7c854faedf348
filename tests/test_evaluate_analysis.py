"""The low-light analysis tables on hand-made prediction files (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfew_mm import analysis
from dfew_mm.errors import DfewMMError
from dfew_mm.evaluate import metrics_path_for, prediction_frame

IDS = [str(i) for i in range(1, 9)]
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
MANIFEST = pd.DataFrame({"clip_id": IDS, "luma_mean": [10, 20, 30, 40, 150, 160, 170, 180.0],
                         "face_luma_mean": [np.nan, 25, 35, 45, 155, 165, 175, 185],
                         "face_rate": 1.0, "pose_rate": 1.0, "has_audio": True})


def _write(folder, name, preds, modalities, trained, fold=1, darken=0.0):
    frame = prediction_frame(IDS, LABELS, np.eye(7)[preds], MANIFEST, modalities=modalities,
                             perturbation="none" if darken == 0 else f"darken:{darken:g}", darken=darken,
                             run=name, trained_modalities=trained, fold=fold, split="test")
    path = folder / f"{name}_{modalities}_{darken}.csv"
    frame.to_csv(path, index=False)
    metrics_path_for(path).write_text(json.dumps({"store": ""}))


@pytest.fixture
def predictions(tmp_path):
    # the face-only model is wrong on the 4 dark clips, the fused model fixes 3 of them and breaks 1 bright one
    _write(tmp_path, "video", np.array([1, 2, 3, 0, 0, 1, 2, 3]), "video", "video")
    _write(tmp_path, "video", np.array([1, 2, 3, 0, 1, 2, 3, 0]), "video", "video", darken=1.0)
    _write(tmp_path, "fused", np.array([0, 1, 2, 0, 0, 1, 2, 0]), "video+pose+audio", "video+pose+audio")
    _write(tmp_path, "fused", np.array([0, 1, 2, 0, 0, 1, 2, 0]), "video", "video+pose+audio")
    return tmp_path


def test_systems_fix_table_and_bins(predictions):
    data = analysis.load_predictions(predictions)
    assert analysis.systems_in_order(data) == ["video", "video [of video+pose+audio]", "video+pose+audio"]
    assert data.loc[data["clip_id"] == "1", "brightness"].iloc[0] == 10  # no face: whole-frame luma
    dark = analysis.low_light_clips(data, 0.5)
    assert sorted(dark) == ["1", "2", "3", "4"]
    fixes = analysis.fix_table(data, dark).set_index("system")
    assert fixes.loc["video+pose+audio", ["baseline_wrong", "fixed", "baseline_right"]].tolist() == [4, 3, 0]
    everything = analysis.fix_table(data).set_index("system")
    assert everything.loc["video+pose+audio", "broken"] == 1
    assert everything.loc["video+pose+audio", "broken_share"] == pytest.approx(1 / 4)

    bins = analysis.brightness_bins(data, 2).set_index(["system", "bin"])
    assert bins.loc[("video", 1), "war"] == 0 and bins.loc[("video", 2), "war"] == 1
    assert bins.loc[("video+pose+audio", 1), "war"] == pytest.approx(3 / 4)
    curves = analysis.darkening_curves(data).set_index(["system", "darken"])
    assert curves.loc[("video", 1.0), "war"] == 0 and curves.loc[("video", 0.0), "n"] == 8
    recall = analysis.per_class_recall(data, dark)
    assert recall.loc["video+pose+audio", "happy"] == 1 and np.isnan(recall.loc["video", "disgust"])


def test_folds_pool_and_errors(tmp_path):
    _write(tmp_path, "video_f1", np.array([0, 1, 2, 3, 0, 1, 2, 3]), "video", "video", fold=1)
    _write(tmp_path, "video_f2", np.array([0, 0, 0, 0, 0, 0, 0, 0]), "video", "video", fold=2)
    data = analysis.load_predictions(tmp_path)
    assert analysis.systems_in_order(data) == ["video"]
    assert analysis.darkening_curves(data)["n"].tolist() == [16]
    with pytest.raises(DfewMMError, match="baseline system 'video\\+pose'"):
        analysis.fix_table(data, baseline="video+pose")
    with pytest.raises(DfewMMError, match="no prediction files"):
        analysis.load_predictions(tmp_path / "empty")
