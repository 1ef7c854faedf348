"""cv and sweep summaries from hand-written run directories (no training): fold spread, pooled intervals."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from dfew_mm.cv import PREDICTIONS_FILE, format_summary, format_sweep, summary_table, sweep_table
from dfew_mm.metrics import classification_metrics, json_safe
from dfew_mm.stats import metric_intervals

LABELS = np.repeat(np.arange(4), 5)  # 20 test clips per fold, 4 classes


def _fake_run(run_dir, fold, best_pred, last_pred, predictions=True):
    run_dir.mkdir(parents=True)
    results = {"best": {"epoch": 2, **classification_metrics(LABELS, best_pred)},
               "last": {"epoch": 4, **classification_metrics(LABELS, last_pred)}}
    (run_dir / "test_metrics.json").write_text(json.dumps(json_safe(results)))
    if predictions:
        rows = [pd.DataFrame({"clip_id": [f"{fold}{i:02d}" for i in range(LABELS.size)], "label": LABELS,
                              "pred": pred, "correct": (pred == LABELS).astype(int), "fold": fold,
                              "run": run_dir.name, "checkpoint": checkpoint})
                for checkpoint, pred in (("best", best_pred), ("last", last_pred))]
        pd.concat(rows).to_csv(run_dir / PREDICTIONS_FILE, index=False)


def _noisy(right_share, seed):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(LABELS.size) < right_share, LABELS, (LABELS + 1) % 4)


def test_cv_summary_pools_fold_predictions(tmp_path):
    preds = {1: _noisy(0.7, 1), 2: _noisy(0.5, 2)}
    for k, pred in preds.items():
        _fake_run(tmp_path / f"fold_{k}", k, pred, _noisy(0.4, k))
    table = summary_table(tmp_path, [1, 2]).set_index("fold")
    assert list(table.index) == ["1", "2", "mean", "std", "pooled"]
    assert table.at["pooled", "n"] == 40 and table.at["1", "n"] == 20
    uar = [100 * classification_metrics(LABELS, p)["uar"] for p in preds.values()]
    assert table.at["mean", "uar"] == pytest.approx(np.mean(uar))
    assert table.at["std", "uar"] == pytest.approx(np.std(uar, ddof=1))
    pooled = metric_intervals(np.tile(LABELS, 2), np.concatenate(list(preds.values())))
    assert table.at["pooled", "uar"] == pytest.approx(100 * pooled["uar"]["value"])
    assert table.at["pooled", "uar_low"] == pytest.approx(100 * pooled["uar"]["low"])
    assert table.at["pooled", "war_high"] == pytest.approx(100 * pooled["war"]["high"])
    for row in ("1", "2", "pooled"):
        assert table.at[row, "uar_low"] <= table.at[row, "uar"] <= table.at[row, "uar_high"]
    assert np.isnan(table.at["mean", "uar_low"])  # the fold spread is mean ± std, not an interval

    text = format_summary(table.reset_index())
    assert "±" in text and "pooled test clips of all folds (n=40): UAR" in text and "bootstrap" in text
    assert f"{table.at['pooled', 'uar']:.2f} [{table.at['pooled', 'uar_low']:.2f}, " in text


def test_cv_summary_without_predictions_warns_and_keeps_point_estimates(tmp_path, caplog):
    _fake_run(tmp_path / "fold_1", 1, _noisy(0.7, 1), _noisy(0.4, 1))
    _fake_run(tmp_path / "fold_2", 2, _noisy(0.5, 2), _noisy(0.4, 2), predictions=False)
    with caplog.at_level(logging.WARNING, logger="dfew_mm.cv"):
        table = summary_table(tmp_path, [1, 2]).set_index("fold")
    assert "fold(s) 2" in caplog.text and PREDICTIONS_FILE in caplog.text
    assert caplog.text.count("have no") == 1  # one warning per run directory
    assert not np.isnan(table.at["1", "uar_low"]) and np.isnan(table.at["2", "uar_low"])
    assert np.isnan(table.at["pooled", "uar_low"])
    # the pooled point estimate still comes from the summed confusion matrices
    pooled = classification_metrics(np.tile(LABELS, 2), np.concatenate([_noisy(0.7, 1), _noisy(0.5, 2)]))
    assert table.at["pooled", "uar"] == pytest.approx(100 * pooled["uar"])
    assert table.at["pooled", "war"] == pytest.approx(100 * pooled["war"])
    text = format_summary(table.reset_index())
    assert "no intervals" in text and "±" in text


def test_sweep_table_pairs_each_subset_with_the_first(tmp_path):
    video = {k: _noisy(0.5, k) for k in (1, 2)}
    for k in (1, 2):
        _fake_run(tmp_path / "video" / f"fold_{k}", k, video[k], video[k])
        _fake_run(tmp_path / "audio" / f"fold_{k}", k, video[k], video[k])  # identical predictions
        _fake_run(tmp_path / "video+audio" / f"fold_{k}", k, LABELS, LABELS)  # right everywhere
    table = sweep_table(tmp_path, ["video", "audio", "video+audio"], [1, 2]).set_index("modalities")
    assert np.isnan(table.at["video", "uar_diff"])
    same = table.loc["audio"]
    assert same["vs"] == "video" and same["uar_diff"] == 0 and same["uar_diff_low"] <= 0 <= same["uar_diff_high"]
    assert same["mcnemar_p"] == 1.0 and same["fixed"] == same["broken"] == 0
    best = table.loc["video+audio"]
    assert best["uar_diff_low"] > 0 and best["mcnemar_p"] < 0.05 and best["broken"] == 0
    assert best["fixed"] == sum(int((v != LABELS).sum()) for v in video.values())
    assert table.at["video", "pooled_uar_low"] < table.at["video", "pooled_uar"] < table.at["video", "pooled_uar_high"]
    text = format_sweep(table.reset_index(), [1, 2])
    assert text.splitlines()[3].startswith("video+audio") and "p=" in text.splitlines()[3]


def test_sweep_table_without_predictions_keeps_point_estimates(tmp_path, caplog):
    for name in ("video", "audio"):
        for k in (1, 2):
            _fake_run(tmp_path / name / f"fold_{k}", k, _noisy(0.5, k), _noisy(0.5, k), predictions=name == "video")
    with caplog.at_level(logging.WARNING, logger="dfew_mm.cv"):
        table = sweep_table(tmp_path, ["video", "audio"], [1, 2]).set_index("modalities")
    assert caplog.text.count("have no") == 1
    assert table.at["audio", "uar"] == pytest.approx(table.at["video", "uar"])
    assert np.isnan(table.at["audio", "pooled_uar_low"]) and np.isnan(table.at["audio", "uar_diff"])
    assert "no intervals" in format_sweep(table.reset_index(), [1, 2])
