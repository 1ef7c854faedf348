"""The low-light analysis tables on hand-made prediction files (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfew_mm import analysis
from dfew_mm.errors import DfewMMError
from dfew_mm.evaluate import metrics_path_for, prediction_frame
from _predictions import write_both_kinds

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


# -- intervals, paired comparisons, fix table -------------------------------------------------------
def test_tables_carry_intervals(predictions):
    data = analysis.load_predictions(predictions)
    assert analysis.dark_clips(data) == ["1", "2", "3", "4"]  # face luma (or frame luma) below 60
    assert analysis.dark_clips(data, threshold=30) == ["1", "2"]
    for table in (analysis.brightness_bins(data, 2), analysis.darkening_curves(data)):
        for metric in ("uar", "war"):
            assert (table[f"{metric}_low"] <= table[metric] + 1e-12).all()
            assert (table[metric] <= table[f"{metric}_high"] + 1e-12).all()
    bins = analysis.brightness_bins(data, 2).set_index(["system", "bin"])
    # wrong on all 4 dark clips (one per class): 0, but 4 clips cannot rule out a moderate accuracy
    assert bins.loc[("video", 1), "war_low"] == 0 and 0.2 < bins.loc[("video", 1), "war_high"] < 0.8

    scores = analysis.subset_scores(data).set_index(["system", "clips"])
    assert scores.loc[("video", "all"), "n"] == 8 and scores.loc[("video", "low-light"), "n"] == 4
    assert scores.loc[("video", "normal"), "uar"] == 1 and scores.loc[("video", "low-light"), "uar"] == 0
    assert scores.loc[("video+pose+audio", "low-light"), "war"] == pytest.approx(3 / 4)
    empty = analysis.subset_scores(data, low_light=[], darkest_quantile=0.25).set_index(["system", "clips"])
    assert empty.loc[("video", "low-light"), "n"] == 0 and np.isnan(empty.loc[("video", "low-light"), "uar"])
    assert empty.loc[("video", "darkest 25%"), "n"] == 2

    cells = analysis.with_intervals(analysis.darkening_curves(data), "system", "darken")
    assert cells.loc["video", 1.0].startswith("0.0 [0.0, ")

    per_class = analysis.per_class_intervals(data, analysis.dark_clips(data)).set_index(["system", "class"])
    happy = per_class.loc[("video+pose+audio", "happy")]
    assert (happy["n"], happy["right"], happy["recall"]) == (1, 1, 1.0) and 0 < happy["recall_low"] < 1
    assert per_class.loc[("video", "disgust"), "n"] == 0 and np.isnan(per_class.loc[("video", "disgust"), "recall"])


def test_fix_summary_counts_nets_and_tests(predictions):
    data = analysis.load_predictions(predictions)
    fixes = analysis.fix_summary(data, analysis.dark_clips(data)).set_index(["clips", "system"])
    dark = fixes.loc[("low-light", "video+pose+audio")]
    assert (dark["added"], dark["fixed"], dark["broken"], dark["net"]) == ("+pose+audio", 3, 0, 3)
    assert dark["p_mcnemar"] == pytest.approx(0.25) and not dark["significant"]  # 3 vs 0 is not enough
    assert dark["net_low"] <= 3 <= dark["net_high"]
    rest = fixes.loc[("rest", "video+pose+audio")]
    assert (rest["fixed"], rest["broken"], rest["net"], rest["p_mcnemar"]) == (0, 1, -1, 1.0)
    assert fixes.loc[("low-light", "video [of video+pose+audio]"), "added"] == "(none)"
    assert list(fixes.reset_index()["clips"]) == ["low-light"] * 2 + ["rest"] * 2


def _write_many(folder, name, labels, preds, modalities, luma):
    ids = [str(i) for i in range(1, len(labels) + 1)]
    manifest = pd.DataFrame({"clip_id": ids, "luma_mean": luma, "face_luma_mean": luma, "face_rate": 1.0,
                             "pose_rate": 1.0, "has_audio": True})
    frame = prediction_frame(ids, labels, np.eye(7)[preds], manifest, modalities=modalities, perturbation="none",
                             darken=0.0, run=name, trained_modalities=modalities, fold=1, split="test")
    frame.to_csv(folder / f"{name}.csv", index=False)
    metrics_path_for(folder / f"{name}.csv").write_text(json.dumps({"store": ""}))


def test_paired_comparisons_identical_and_dominating(tmp_path):
    labels = np.repeat(np.arange(4), 10)
    base = np.where(np.tile(np.arange(10) < 4, 4), (labels + 1) % 4, labels)  # wrong on 4 clips per class
    luma = np.where(np.tile(np.arange(10) < 5, 4), 20.0, 140.0)
    _write_many(tmp_path, "video", labels, base, "video", luma)
    _write_many(tmp_path, "same", labels, base, "video+pose", luma)  # identical predictions
    _write_many(tmp_path, "fused", labels, labels, "video+audio", luma)  # right wherever video is wrong
    data = analysis.load_predictions(tmp_path)
    paired = analysis.paired_comparisons(data).set_index("system")
    same = paired.loc["video+pose"]
    assert same["uar_diff"] == 0 and same["uar_diff_low"] <= 0 <= same["uar_diff_high"]
    assert same["p_mcnemar"] == 1.0 and same["p_boot"] == 1.0
    fused = paired.loc["video+audio"]
    assert fused["uar_diff"] == pytest.approx(0.4) and fused["uar_diff_low"] > 0
    assert (fused["fixed"], fused["broken"]) == (16, 0) and fused["p_mcnemar"] < 1e-4
    display = analysis.format_paired(paired.reset_index())
    assert display.loc["video+audio", "difference [95% CI]"].startswith("+40.0 [+")

    fixes = analysis.fix_table(data)
    assert fixes["system"].tolist() == ["video+audio", "video+pose"]  # sorted by net gain
    assert fixes.loc[0, "significant"] and fixes.loc[0, "net_low"] > 0 and not fixes.loc[1, "significant"]
    dark = analysis.paired_comparisons(data, clip_ids=analysis.dark_clips(data)).set_index("system")
    assert dark.loc["video+audio", "n"] == 20


def test_low_light_selection_and_figures(predictions, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    data = analysis.load_predictions(predictions)
    ids, rule = analysis.low_light_selection(data)
    assert ids == ["1", "2", "3", "4"] and "below 60" in rule
    ids, rule = analysis.low_light_selection(data, dark_luma=5, quantile=0.25)
    assert ids == ["1", "2"] and "darkest 25%" in rule
    figures = {
        "bins": analysis.plot_brightness_bins(analysis.brightness_bins(data, 2)),
        "curves": analysis.plot_darkening(analysis.darkening_curves(data)),
        "per_class": analysis.plot_per_class(analysis.per_class_intervals(data, ids)),
        "paired": analysis.plot_paired({"all": analysis.paired_comparisons(data)}),
    }
    for name, fig in figures.items():
        assert analysis.save_figure(fig, tmp_path, name).stat().st_size > 5000


# -- the two kinds of darkening -----------------------------------------------------------------------
@pytest.fixture
def both_kinds(tmp_path):
    return write_both_kinds(tmp_path)


def test_prediction_rows_say_which_darkening(both_kinds):
    data = analysis.load_predictions(both_kinds)
    kinds = data.groupby("perturbation")[["darken_kind", "darken"]].first()
    assert kinds.loc["none"].tolist() == ["none", 0.0]
    assert kinds.loc["darken:1"].tolist() == ["crop", 1.0] and kinds.loc["scene:1"].tolist() == ["scene", 1.0]
    assert analysis.darkening_kinds(data) == ["scene", "crop"]
    assert analysis.strongest_passes(data, "video") == {"scene": "scene:1", "crop": "darken:1"}
    # natural brightness comes from the original store, not from the darkened frames
    scene = data[(data["darken_kind"] == "scene") & (data["system"] == "video")].set_index("clip_id")
    assert scene.loc["2", "face_luma_mean"] == 2.5 and scene.loc["2", "brightness"] == 25
    assert analysis.dark_clips(data) == ["1", "2", "3", "4"]


def test_old_prediction_files_still_load(predictions):
    for path in predictions.glob("*.csv"):  # files written before the darken_kind column
        if not path.name.endswith("excluded_clips.csv"):
            pd.read_csv(path).drop(columns="darken_kind").to_csv(path, index=False)
    data = analysis.load_predictions(predictions)
    assert set(zip(data["perturbation"], data["darken_kind"])) == {("none", "none"), ("darken:1", "crop")}
    assert analysis.darkening_curves(data)["kind"].unique().tolist() == ["crop"]


def test_curves_and_detection_rates_per_kind(both_kinds, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    data = analysis.load_predictions(both_kinds)
    curves = analysis.darkening_curves(data).set_index(["kind", "system", "darken"])
    assert curves.loc[("scene", "video", 1.0), "war"] == 0 and curves.loc[("crop", "video", 1.0), "war"] == 1
    assert curves.loc[("scene", "video+pose+audio", 1.0), "war"] == 1
    assert curves.loc[("scene", "video", 0.0), "n"] == curves.loc[("crop", "video", 0.0), "n"] == 8  # shared origin
    only_crop = analysis.darkening_curves(data, "crop")
    assert set(only_crop["kind"]) == {"crop"} and len(only_crop) == 4
    cells = analysis.with_intervals(analysis.darkening_curves(data), "system", ["kind", "darken"])
    assert cells.loc["video", ("scene", 1.0)].startswith("0.0 [")

    rates = analysis.detection_rates(data).set_index(["kind", "darken"])
    assert rates.loc[("scene", 0.0), "face_rate"] == 1
    assert rates.loc[("scene", 1.0), "face_rate"] == pytest.approx(0.5625)
    assert rates.loc[("scene", 1.0), "pose_rate"] == 0.25 and rates.loc[("crop", 1.0), "pose_rate"] == 1
    assert rates.loc[("scene", 1.0), "n"] == 8  # clips, not rows of every system
    low, high = rates.loc[("scene", 1.0), ["face_rate_low", "face_rate_high"]]
    assert 0.2 < low < 0.5625 < high < 0.9

    for name, fig in (("curves", analysis.plot_darkening(analysis.darkening_curves(data))),
                      ("rates", analysis.plot_detection_rates(analysis.detection_rates(data)))):
        assert analysis.save_figure(fig, tmp_path / "figures", name).stat().st_size > 5000
    assert "scene level" in fig.legends[0].get_texts()[0].get_text()


def test_curves_keep_the_clips_every_pass_predicted(both_kinds):
    data = analysis.load_predictions(both_kinds)
    data = data[~((data["darken_kind"] == "scene") & (data["clip_id"] == "8"))]  # one clip missing in the dark store
    curves = analysis.darkening_curves(data, "scene").set_index(["system", "darken"])
    assert curves.loc[("video", 0.0), "n"] == curves.loc[("video", 1.0), "n"] == 7
    assert analysis.darkening_curves(data, "crop")["n"].tolist() == [8] * 4


def test_scene_darkened_clips_without_an_original_pass(both_kinds, caplog):
    for path in both_kinds.iterdir():  # keep only the passes on the scene-darkened store
        if "scene" not in path.name:
            path.unlink()
    data = analysis.load_predictions(both_kinds)
    assert data.loc[data["darken_kind"] == "scene", "brightness"].isna().all()
    assert "natural brightness is unknown" in caplog.text
def test_reliance_table_means_per_light_and_modality(predictions):
    data = analysis.load_predictions(predictions)
    assert not analysis.has_reliance(data)  # files without --attribution: the section has nothing to show
    assert analysis.reliance_table(data, ["1", "2"]).empty
    fused = data["system"] == "video+pose+audio"
    data.loc[fused, "reliance_video"] = np.where(data.loc[fused, "clip_id"].isin(["1", "2", "3", "4"]), 0.0, 0.4)
    data.loc[fused, "reliance_audio"] = np.where(data.loc[fused, "clip_id"].isin(["1", "2", "3", "4"]), 0.5, 0.1)
    dark = analysis.dark_clips(data)  # clips 1-4: face luma below 60 (clip 1 by its frame luma)
    table = analysis.reliance_table(data, dark).set_index(["clips", "modality"])
    assert list(table["system"].unique()) == ["video+pose+audio"] and len(table) == 4
    assert table.loc[("low-light", "audio"), "reliance"] == pytest.approx(0.5)
    assert table.loc[("normal", "video"), "reliance"] == pytest.approx(0.4)
    assert (table["n"] == 4).all()
    low, high = table.loc[("low-light", "audio"), ["reliance_low", "reliance_high"]]
    assert low <= 0.5 <= high
    fig = analysis.plot_reliance(table.reset_index())
    assert len(fig.axes) == 1
