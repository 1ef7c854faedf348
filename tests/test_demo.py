"""`dfew_mm demo` end to end: synthetic data, real extraction, tiny training, evaluation, report."""

from __future__ import annotations

import pandas as pd
import pytest

from dfew_mm.datasets.dfew import TEST_DIR
from dfew_mm.evaluate import PREDICTION_COLUMNS, RELIANCE_COLUMNS


@pytest.mark.slow
def test_demo_end_to_end(demo_run):
    from dfew_mm.demo import SUMMARY_COLUMNS

    out, printed = demo_run["out"], demo_run["stdout"]
    assert (out / "dfew" / "synth_truth.csv").is_file()
    assert (out / "features" / "manifest.csv").is_file()
    test = pd.read_csv(out / "splits" / TEST_DIR / "set_1.csv")  # the demo's own fold 1: half of the clips
    assert len(test) == pytest.approx(35 / 2, abs=4)
    for run in ("video", "pose", "audio", "video+pose+audio"):
        assert (out / "runs" / run / "best.pt").is_file() and (out / "runs" / run / "test_metrics.json").is_file()
    files = sorted(p.name for p in (out / "predictions").glob("*.csv"))
    assert files == ["audio__audio.csv", "pose__pose.csv", "video+pose+audio__video+audio.csv",
                     "video+pose+audio__video+pose+audio.csv", "video+pose+audio__video+pose.csv", "video__video.csv"]
    for name in files:
        frame = pd.read_csv(out / "predictions" / name)
        with_reliance = name == "video+pose+audio__video+pose+audio.csv"  # the fused model with all it has
        assert list(frame.columns) == [*PREDICTION_COLUMNS, *(RELIANCE_COLUMNS if with_reliance else ())]
        assert sorted(frame["darken"].unique()) == [0.0, 0.5, 1.0]
        assert frame["clip_id"].nunique() == len(test)
    # the printed summary: UARs with intervals and clip counts, the claims, the darkening table, the report
    assert "seed 0: UAR (%) on the test clips, 95% bootstrap interval and clip count:" in printed
    assert "face-only, low light vs normal:" in printed and "lower in low light: " in printed
    assert "(all clips, paired):" in printed and "(low-light clips, paired):" in printed
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    uar = summary[summary["kind"] == "UAR"]
    assert set(uar["system"]) == {"video", "pose", "audio", "video+pose+audio"}
    assert set(uar["clips"]) == {"all", "low-light", "normal"}
    assert ((uar["uar_low"] <= uar["uar"]) & (uar["uar"] <= uar["uar_high"])).all()
    assert len(summary[summary["kind"] == "paired difference"]) == 2
    darkening = pd.read_csv(out / "darkening.csv", index_col=0)
    assert list(darkening.index) == ["video", "pose", "audio", "video+pose", "video+audio", "video+pose+audio"]
    assert darkening["UAR@dark0"].between(0, 100).all()
    assert "UAR@dark0" in printed and str(out / "report" / "low_light_analysis.html") in printed


@pytest.mark.slow
def test_demo_steps_skip_finished_work(demo_run):
    from dfew_mm import demo

    out = demo_run["out"]
    last = out / "runs" / "video" / "last.pt"
    mtime = last.stat().st_mtime
    root, splits = demo._synth(out / "dfew", 35, 0, 1)
    assert root == out / "dfew" and splits == out / "splits"
    checkpoints = demo._train(splits, out / "features", out / "runs", 2, 0, ())
    assert checkpoints["video"] == last and last.stat().st_mtime == mtime
