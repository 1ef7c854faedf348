"""`dfew_mm demo` end to end: synthetic data, real extraction, tiny training, evaluation, report."""

from __future__ import annotations

import pandas as pd
import pytest

from dfew_mm.evaluate import PREDICTION_COLUMNS


@pytest.mark.slow
def test_demo_end_to_end(demo_run):
    out, printed = demo_run["out"], demo_run["stdout"]
    assert (out / "dfew" / "synth_truth.csv").is_file()
    assert (out / "features" / "manifest.csv").is_file()
    for run in ("video", "video+pose+audio"):
        assert (out / "runs" / run / "best.pt").is_file() and (out / "runs" / run / "test_metrics.json").is_file()
    files = sorted(p.name for p in (out / "predictions").glob("*.csv"))
    assert files == ["video+pose+audio__video+audio.csv", "video+pose+audio__video+pose+audio.csv",
                     "video+pose+audio__video+pose.csv", "video__video.csv"]
    for name in files:
        frame = pd.read_csv(out / "predictions" / name)
        assert list(frame.columns) == list(PREDICTION_COLUMNS)
        assert sorted(frame["darken"].unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the printed summary: one row per system, the report location
    for system in ("video", "video+pose", "video+audio", "video+pose+audio"):
        assert f"\n{system} " in printed
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.index) == ["video", "video+pose", "video+audio", "video+pose+audio"]
    assert summary["UAR@dark0"].between(0, 100).all()
    assert "UAR@dark0" in printed and str(out / "report" / "low_light_analysis.html") in printed


@pytest.mark.slow
def test_demo_steps_skip_finished_work(demo_run):
    from dfew_mm import demo

    out = demo_run["out"]
    last = out / "runs" / "video" / "last.pt"
    mtime = last.stat().st_mtime
    assert demo._synth(out / "dfew", 35, 0, 1) == out / "dfew"
    checkpoints = demo._train(out / "dfew", out / "features", out / "runs", 2, 0, ())
    assert checkpoints["video"] == last and last.stat().st_mtime == mtime
