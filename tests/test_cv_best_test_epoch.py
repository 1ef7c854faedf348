"""`dfew_mm cv --best-test-epoch`: the optimistic best-test-epoch figures beside the honest ones, without
changing the run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from _train_stores import SMALL, make_store
from dfew_mm.cli import main
from dfew_mm.cv import OPTIMISTIC_COLUMNS, format_summary, summary_table
from dfew_mm.train import TEST_BY_EPOCH


@pytest.fixture(scope="module")
def two_cv_runs(tmp_path_factory, one_torch_thread):
    """The same 2-fold cv (pose, 3 epochs) with and without --best-test-epoch; with dropout, so that training
    draws from the global random stream that an evaluation's data loader also draws from."""
    root = tmp_path_factory.mktemp("best_test")
    dfew, store = make_store(root)
    common = ["cv", "--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--folds", "1,2",
              "--modalities", "pose", "--no-progress", *SMALL, "model.pose.dropout=0.3"]
    assert main([*common, "--out", str(root / "plain")]) == 0
    assert main([*common, "--out", str(root / "optimistic"), "--best-test-epoch"]) == 0
    return root / "plain", root / "optimistic"


def test_the_honest_run_is_unchanged(two_cv_runs):
    """Evaluating the test fold after every epoch draws from saved random states: training, validation and
    the selected checkpoint's test figures are those of the run without it."""
    plain, optimistic = two_cv_runs
    for k in (1, 2):
        a, b = (pd.read_json(run / f"fold_{k}" / "metrics.jsonl", lines=True) for run in (plain, optimistic))
        pd.testing.assert_frame_equal(a.drop(columns="clips_per_s"), b.drop(columns="clips_per_s"))
        assert (json.loads((plain / f"fold_{k}" / "test_metrics.json").read_text())
                == json.loads((optimistic / f"fold_{k}" / "test_metrics.json").read_text()))
        assert not (plain / f"fold_{k}" / TEST_BY_EPOCH).exists()


def test_both_figures_per_fold_and_pooled_each_labelled(two_cv_runs):
    plain, optimistic = two_cv_runs
    table = pd.read_csv(optimistic / "cv_summary.csv", dtype={"fold": str}).set_index("fold")
    assert set(OPTIMISTIC_COLUMNS) <= set(table.columns)
    assert not set(OPTIMISTIC_COLUMNS) & set(pd.read_csv(plain / "cv_summary.csv").columns)
    pooled = [0, 0]  # per fold: the epoch best on the test fold, read back from the per-epoch file
    for k in ("1", "2"):
        epochs = pd.read_json(optimistic / f"fold_{k}" / TEST_BY_EPOCH, lines=True)
        assert epochs["epoch"].tolist() == [0, 1, 2]
        best = epochs.loc[epochs["uar"].idxmax()]
        assert table.at[k, "best_test_epoch"] == best["epoch"] + 1
        assert table.at[k, "uar_optimistic"] == pytest.approx(100 * best["uar"], abs=1e-3)
        assert table.at[k, "war_optimistic"] == pytest.approx(100 * best["war"], abs=1e-3)
        # the validation-chosen epoch is one of the candidates: per fold the optimistic UAR is never lower
        assert table.at[k, "uar_optimistic"] >= table.at[k, "uar"] - 1e-6
        pooled[0] += sum(best["confusion"][c][c] for c in range(7))
        pooled[1] += best["n"]
    assert table.at["pooled", "war_optimistic"] == pytest.approx(100 * pooled[0] / pooled[1], abs=1e-3)
    assert table.at["mean", "uar_optimistic"] == pytest.approx(table.loc[["1", "2"], "uar_optimistic"].mean(), abs=1e-3)
    text = (optimistic / "cv_summary.txt").read_text()
    honest, _, rest = text.partition("OPTIMISTIC, not held out")
    assert "pooled test clips of all folds" in honest and "best UAR on its own test fold" in rest
    assert "UAR optimistic" in rest and "UAR honest" in rest and "optimistic pooled (n=16)" in rest
    assert "OPTIMISTIC" not in (plain / "cv_summary.txt").read_text()


def test_a_fold_trained_without_it_has_no_optimistic_figure(two_cv_runs, tmp_path, caplog):
    plain, optimistic = two_cv_runs
    mixed = tmp_path / "mixed"
    shutil.copytree(optimistic / "fold_1", mixed / "fold_1")
    shutil.copytree(plain / "fold_2", mixed / "fold_2")
    table = summary_table(mixed, (1, 2), n_boot=200, optimistic=True).set_index("fold")
    assert "fold_2 has no test_by_epoch.jsonl" in caplog.text and "--best-test-epoch" in caplog.text
    assert not pd.isna(table.at["1", "uar_optimistic"]) and pd.isna(table.at["2", "uar_optimistic"])
    assert pd.isna(table.at["mean", "uar_optimistic"]) and pd.isna(table.at["pooled", "uar_optimistic"])
    assert "no mean or pooled optimistic figure" in format_summary(table.reset_index())
