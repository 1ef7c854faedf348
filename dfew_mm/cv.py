"""Cross-validation over the folds of the dataset's protocol (k folds, or the one fold of a fixed train/test
split): one training run per fold, then a per-fold, mean ± std and pooled table.

Uncertainty comes two ways: the spread of the fold results (mean ± std over folds, each fold with
its own training and test clips) and a bootstrap interval of the pooled test predictions of all
folds (how much the result moves with the test clips; see `dfew_mm.stats`).

The headline is honest: each fold's checkpoint is chosen on a validation split carved from its
training fold. `best_test_epoch=True` adds the protocol many DFEW papers report, labelled
optimistic: the test fold is evaluated after every epoch and each fold's epoch with the best test
UAR is reported (OPTIMISTIC_COLUMNS), so a figure can be set beside published ones together with how
much choosing the epoch on the test clips flatters it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.config import ExperimentConfig
from dfew_mm.errors import DfewMMError
from dfew_mm.metrics import classification_metrics
from dfew_mm.predictions import classes_of
from dfew_mm.stats import LEVEL, METHOD, N_BOOT, mcnemar, metric_intervals, paired_difference

log = logging.getLogger(__name__)

# Written by training at the end of a run: the columns of `dfew_mm evaluate`'s prediction file plus
# `checkpoint` (best|last), one row per test clip and checkpoint.
PREDICTIONS_FILE = "test_predictions.csv"
SWEEP_COLUMNS = ["modalities", "folds", "n", "uar", "uar_std", "war", "war_std", "pooled_uar", "pooled_uar_low",
                 "pooled_uar_high", "pooled_war", "pooled_war_low", "pooled_war_high", "vs", "uar_diff",
                 "uar_diff_low", "uar_diff_high", "fixed", "broken", "mcnemar_p"]
SUMMARY_COLUMNS = ["fold", "n", "uar", "uar_low", "uar_high", "war", "war_low", "war_high", "best_epoch",
                   "uar_last", "war_last"]
# With best_test_epoch: the epoch (1-based) with the best test UAR and its UAR/WAR (%), not held out.
OPTIMISTIC_COLUMNS = ["best_test_epoch", "uar_optimistic", "war_optimistic"]


def fold_config(cfg: ExperimentConfig, fold: int, out_dir: Path) -> ExperimentConfig:
    data = dataclasses.replace(cfg.data, fold=fold)
    train = dataclasses.replace(cfg.train, out_dir=str(out_dir / f"fold_{fold}"))
    return dataclasses.replace(cfg, data=data, train=train)


def fold_predictions(run_dir: Path, checkpoint: str = "best") -> pd.DataFrame | None:
    """Per-clip test predictions of one checkpoint (`best` or `last`) of a finished run, or None when
    the run has no PREDICTIONS_FILE (runs from before training wrote it)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"clip_id": str})
    if "checkpoint" not in frame.columns:
        raise DfewMMError(f"{path} has no 'checkpoint' column (best|last); re-run the fold's test evaluation")
    return frame[frame["checkpoint"] == checkpoint].reset_index(drop=True)


def pooled_predictions(out_dir: Path, folds: Sequence[int], checkpoint: str = "best",
                       frames: dict[int, pd.DataFrame | None] | None = None) -> pd.DataFrame | None:
    """The test predictions of all folds in one frame (DFEW tests each clip in exactly one fold), or
    None with a warning when a fold lacks them. `frames`: the folds' predictions if already read."""
    if frames is None:
        frames = {k: fold_predictions(Path(out_dir) / f"fold_{k}", checkpoint) for k in folds}
    missing = [k for k, f in frames.items() if f is None]
    if missing:
        log.warning("fold(s) %s in %s have no %s: the summary gives point estimates without intervals",
                    ", ".join(map(str, missing)), out_dir, PREDICTIONS_FILE)
        return None
    return pd.concat(frames.values(), ignore_index=True)


def best_test_epoch(run_dir: Path, epochs: int) -> dict | None:
    """The epoch with the best test UAR in a run's TEST_BY_EPOCH (`train(test_every_epoch=True)`), as
    {"epoch" (0-based), "uar", "war", "confusion"}; None with a warning when the run has no such file."""
    from dfew_mm.train import TEST_BY_EPOCH

    path = Path(run_dir) / TEST_BY_EPOCH
    if not path.is_file():
        log.warning("%s has no %s (trained without --best-test-epoch): no optimistic figure for it; rerun the "
                    "fold into a new --out with --best-test-epoch", run_dir, TEST_BY_EPOCH)
        return None
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record  # a resumed run may repeat an epoch: the last one counts
    if len(by_epoch) < epochs:
        log.warning("%s covers %d of the %d epochs (resumed from a run without --best-test-epoch?): the optimistic "
                    "figure picks among those", path, len(by_epoch), epochs)
    return max(by_epoch.values(), key=lambda r: (r["uar"], -r["epoch"]))  # the earliest of equal ones


def summary_table(out_dir: Path, folds: Sequence[int], n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0, optimistic: bool = False) -> pd.DataFrame:
    """UAR/WAR (%) of the selected (best-on-validation) and last checkpoints per fold, mean and std
    over the folds, and the folds' test clips pooled.

    `uar_low`/`uar_high` (and WAR's) are bootstrap intervals (`dfew_mm.stats`) of the selected
    checkpoint, per fold and pooled, from each fold's PREDICTIONS_FILE; NaN (with a warning) when a
    fold lacks it. Without it the pooled point estimates come from the summed confusion matrices.
    With `optimistic`, also OPTIMISTIC_COLUMNS: each fold's best-test-epoch figures (`best_test_epoch`),
    their mean and std, and pooled from the summed confusion matrices of those epochs.
    """
    out_dir = Path(out_dir)
    rows, confusions, frames = [], {"best": [], "last": [], "optimistic": []}, {}
    for k in folds:
        path = out_dir / f"fold_{k}" / "test_metrics.json"
        if not path.is_file():
            raise DfewMMError(f"{path} is missing: fold {k} has not finished")
        result = json.loads(path.read_text())
        for name in ("best", "last"):
            confusions[name].append(np.asarray(result[name]["confusion"]))
        row = {"fold": str(k), "n": result["best"]["n"], "uar": 100 * result["best"]["uar"],
               "war": 100 * result["best"]["war"], "best_epoch": result["best"]["epoch"] + 1,
               "uar_last": 100 * result["last"]["uar"], "war_last": 100 * result["last"]["war"]}
        peak = best_test_epoch(out_dir / f"fold_{k}", result["last"]["epoch"] + 1) if optimistic else None
        if peak is not None:
            row.update(best_test_epoch=peak["epoch"] + 1, uar_optimistic=100 * peak["uar"],
                       war_optimistic=100 * peak["war"])
            confusions["optimistic"].append(np.asarray(peak["confusion"]))
        predictions = frames[k] = fold_predictions(out_dir / f"fold_{k}")
        if predictions is not None:
            row.update(_interval_columns(predictions, n_boot, level, seed))
            if abs(row["uar"] - 100 * _uar(predictions)) > 1e-3:
                log.warning("fold %d: %s and test_metrics.json disagree on UAR (%.2f vs %.2f)", k,
                            PREDICTIONS_FILE, 100 * _uar(predictions), row["uar"])
        rows.append(row)
    columns = SUMMARY_COLUMNS + (OPTIMISTIC_COLUMNS if optimistic else [])
    table = pd.DataFrame(rows).reindex(columns=columns)
    metrics = ["uar", "war", "uar_last", "war_last"]
    mean = {"fold": "mean", **table[metrics].mean().to_dict()}
    std = {"fold": "std", **table[metrics].std(ddof=1 if len(table) > 1 else 0).to_dict()}
    if optimistic:  # over all folds or none: a fold trained without the per-epoch test figures has none
        chosen = table[["uar_optimistic", "war_optimistic"]]
        mean.update(chosen.mean(skipna=False).to_dict())
        std.update(chosen.std(ddof=1 if len(table) > 1 else 0, skipna=False).to_dict())
    pooled = {"fold": "pooled", "n": int(table["n"].sum())}
    for name, confusion in confusions.items():
        if name == "optimistic" and len(confusion) < len(folds):
            continue  # a fold without per-epoch test figures: no pooled optimistic figure either
        if confusion:
            suffix = "" if name == "best" else f"_{name}"
            pooled[f"uar{suffix}"], pooled[f"war{suffix}"] = (100 * v for v in _from_confusion(sum(confusion)))
    predictions = pooled_predictions(out_dir, folds, frames=frames)
    if predictions is not None:
        pooled.update(_interval_columns(predictions, n_boot, level, seed))
    table = pd.concat([table, pd.DataFrame([mean, std, pooled])], ignore_index=True)
    dtypes = {"n": "Int64", "best_epoch": "Int64", **({"best_test_epoch": "Int64"} if optimistic else {})}
    return table.reindex(columns=columns).astype(dtypes)


def format_summary(table: pd.DataFrame) -> str:
    """The per-fold table with intervals, mean ± std over the folds, and the pooled estimate."""
    by_fold = table.set_index("fold")
    per_fold = table[~table["fold"].isin(["mean", "std", "pooled"])]
    shown = pd.DataFrame({"fold": per_fold["fold"], "n": per_fold["n"].astype(int),
                          "UAR [95% CI]": _with_interval(per_fold, "uar"),
                          "WAR [95% CI]": _with_interval(per_fold, "war"),
                          "best_epoch": per_fold["best_epoch"].astype(int),
                          "UAR last": per_fold["uar_last"].map("{:.2f}".format),
                          "WAR last": per_fold["war_last"].map("{:.2f}".format)})
    mean, std, pooled = by_fold.loc["mean"], by_fold.loc["std"], by_fold.loc["pooled"]
    lines = [shown.to_string(index=False), "",
             f"mean ± std over {len(per_fold)} folds: UAR {mean['uar']:.2f} ± {std['uar']:.2f}   "
             f"WAR {mean['war']:.2f} ± {std['war']:.2f}   (checkpoint chosen on validation UAR; last epoch: "
             f"UAR {mean['uar_last']:.2f} ± {std['uar_last']:.2f}, "
             f"WAR {mean['war_last']:.2f} ± {std['war_last']:.2f})",
             f"pooled test clips of all folds (n={int(pooled['n'])}): UAR {_with_interval(pooled, 'uar')}   "
             f"WAR {_with_interval(pooled, 'war')}"]
    if pd.isna(pooled["uar_low"]):
        lines.append(f"no intervals: some folds lack {PREDICTIONS_FILE} (per-clip test predictions)")
    else:
        lines.append(f"[95% CI]: {METHOD}; clips resampled within each true class, {N_BOOT} resamples")
    if "uar_optimistic" in table.columns:
        lines += ["", *_format_optimistic(per_fold, mean, std, pooled)]
    return "\n".join(lines)


def _format_optimistic(per_fold: pd.DataFrame, mean: pd.Series, std: pd.Series, pooled: pd.Series) -> list[str]:
    """The best-test-epoch block of `format_summary`, each figure beside the honest one."""
    lines = ["OPTIMISTIC, not held out: each fold's epoch with the best UAR on its own test fold (the protocol many "
             "DFEW papers report); the honest figures above choose the checkpoint on validation"]
    shown = pd.DataFrame({"fold": per_fold["fold"],
                          "best_test_epoch": per_fold["best_test_epoch"].map(lambda e: "-" if pd.isna(e) else int(e)),
                          "UAR optimistic": per_fold["uar_optimistic"].map("{:.2f}".format),
                          "WAR optimistic": per_fold["war_optimistic"].map("{:.2f}".format),
                          "UAR honest": per_fold["uar"].map("{:.2f}".format),
                          "WAR honest": per_fold["war"].map("{:.2f}".format)})
    lines.append(shown.to_string(index=False))
    if pd.isna(pooled.get("uar_optimistic")):
        lines.append("no mean or pooled optimistic figure: some folds were trained without --best-test-epoch")
        return lines
    lines += [f"optimistic mean ± std over {len(per_fold)} folds: UAR {mean['uar_optimistic']:.2f} ± "
              f"{std['uar_optimistic']:.2f}   WAR {mean['war_optimistic']:.2f} ± {std['war_optimistic']:.2f}",
              f"optimistic pooled (n={int(pooled['n'])}): UAR {pooled['uar_optimistic']:.2f}   WAR "
              f"{pooled['war_optimistic']:.2f}; choosing the epoch on the test fold adds "
              f"{pooled['uar_optimistic'] - pooled['uar']:+.2f} UAR, "
              f"{pooled['war_optimistic'] - pooled['war']:+.2f} WAR to the honest pooled figure"]
    return lines


def _interval_columns(predictions: pd.DataFrame, n_boot: int, level: float, seed: int) -> dict:
    ci = metric_intervals(predictions["label"], predictions["pred"], n_boot=n_boot, level=level, seed=seed)
    return {f"{m}_{end}": 100 * ci[m][end] for m in ("uar", "war") for end in ("low", "high")}


def _uar(predictions: pd.DataFrame) -> float:
    return classification_metrics(predictions["label"], predictions["pred"], classes_of(predictions) or None)["uar"]


def _from_confusion(confusion: np.ndarray) -> tuple[float, float]:
    """UAR (mean recall over the classes present) and WAR from a confusion matrix (rows = true class)."""
    per_class = confusion.sum(axis=1)
    present = per_class > 0
    if not present.any():
        return math.nan, math.nan
    uar = (np.diag(confusion)[present] / per_class[present]).mean()
    return float(uar), float(np.trace(confusion) / confusion.sum())


def _with_interval(rows, metric: str):
    """'55.20 [53.10, 57.30]' (or '55.20' without an interval) for a row or each row of a frame."""
    def one(row) -> str:
        low, high = row.get(f"{metric}_low", math.nan), row.get(f"{metric}_high", math.nan)
        text = f"{row[metric]:.2f}"
        return text if pd.isna(low) else f"{text} [{low:.2f}, {high:.2f}]"

    return one(rows) if isinstance(rows, pd.Series) else [one(r) for _, r in rows.iterrows()]


def cross_validate(cfg: ExperimentConfig, folds: Sequence[int], out_dir: str | Path,
                   best_test_epoch: bool = False) -> pd.DataFrame:
    """Train every fold into OUT/fold_k (finished folds are kept, interrupted ones resumed) and write
    OUT/cv_summary.csv and OUT/cv_summary.txt. Returns the table. `best_test_epoch` also evaluates each
    fold's test clips after every epoch and adds the optimistic figures (see the module docstring)."""
    from dfew_mm.distributed import setup_distributed
    from dfew_mm.train import train

    out_dir = Path(out_dir)
    for k in folds:
        fold_cfg = fold_config(cfg, k, out_dir)
        run = Path(fold_cfg.train.out_dir)
        if (run / "test_metrics.json").is_file():
            log.info("fold %d already finished in %s", k, run)
            continue
        log.info("fold %d -> %s", k, run)
        train(fold_cfg, resume=(run / "last.pt").is_file(), test_every_epoch=best_test_epoch)
    table = summary_table(out_dir, folds, optimistic=best_test_epoch)
    if setup_distributed(cfg.train.device).main:
        table.to_csv(out_dir / "cv_summary.csv", index=False, float_format="%.4f")
        (out_dir / "cv_summary.txt").write_text(format_summary(table) + "\n")
    return table


def modality_subsets(modalities: Sequence[str]) -> list[list[str]]:
    """Every non-empty subset, singletons first: [[video], [pose], ..., [video, pose, audio]]."""
    return [list(c) for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def sweep(cfg: ExperimentConfig, folds: Sequence[int], out_dir: str | Path) -> pd.DataFrame:
    """Cross-validate every non-empty subset of `cfg.model.modalities` into OUT/<a+b>/fold_k and write
    OUT/sweep_summary.{csv,txt} (see `sweep_table`)."""
    from dfew_mm.distributed import setup_distributed

    out_dir = Path(out_dir)
    names = []
    for subset in modality_subsets(cfg.model.modalities):
        names.append("+".join(subset))
        sub_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, modalities=subset))
        cross_validate(sub_cfg, folds, out_dir / names[-1])
    summary = sweep_table(out_dir, names, folds)
    if setup_distributed(cfg.train.device).main:
        summary.to_csv(out_dir / "sweep_summary.csv", index=False, float_format="%.4f")
        (out_dir / "sweep_summary.txt").write_text(format_sweep(summary, folds) + "\n")
    return summary


def sweep_table(out_dir: Path, names: Sequence[str], folds: Sequence[int], n_boot: int = N_BOOT,
                level: float = LEVEL, seed: int = 0) -> pd.DataFrame:
    """One row per modality subset (OUT/<name>/fold_k runs): mean ± std test UAR and WAR (%) over the
    folds, the pooled test clips with intervals, and a paired comparison with the first subset (the
    baseline, e.g. video): UAR difference with its paired bootstrap interval and McNemar's exact p.
    Intervals and comparisons are NaN when a run lacks its PREDICTIONS_FILE."""
    out_dir = Path(out_dir)
    rows, base = [], None
    for i, name in enumerate(names):
        table = summary_table(out_dir / name, folds, n_boot, level, seed).set_index("fold")
        row = {"modalities": name, "folds": len(folds), "n": table.at["pooled", "n"],
               "uar": table.at["mean", "uar"], "uar_std": table.at["std", "uar"],
               "war": table.at["mean", "war"], "war_std": table.at["std", "war"]}
        for metric in ("uar", "war"):
            for column in ("", "_low", "_high"):
                row[f"pooled_{metric}{column}"] = table.at["pooled", f"{metric}{column}"]
        # summary_table has warned already when a fold lacks its predictions
        has_predictions = not pd.isna(table.at["pooled", "uar_low"])
        predictions = pooled_predictions(out_dir / name, folds) if has_predictions else None
        if i == 0:
            base = predictions
        elif predictions is not None and base is not None:
            row.update(vs=names[0], **_paired_columns(base, predictions, n_boot, level, seed))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS).astype({"n": "Int64", "fixed": "Int64", "broken": "Int64"})


def format_sweep(summary: pd.DataFrame, folds: Sequence[int]) -> str:
    lines = [f"test fold metrics (%), folds {list(folds)}: mean ± std over folds, then the pooled test clips "
             f"[95% CI]; last column: paired UAR difference with {summary['modalities'].iloc[0]} [95% CI], "
             "McNemar p"]
    for r in summary.itertuples():
        row = summary.loc[r.Index]
        text = (f"{r.modalities:18s} UAR {r.uar:6.2f} ± {r.uar_std:5.2f} pooled {_with_interval(row, 'pooled_uar')}"
                f"   WAR {r.war:6.2f} ± {r.war_std:5.2f} pooled {_with_interval(row, 'pooled_war')}")
        if not pd.isna(r.uar_diff):
            text += f"   {r.uar_diff:+.2f} [{r.uar_diff_low:+.2f}, {r.uar_diff_high:+.2f}] p={r.mcnemar_p:.3g}"
        lines.append(text)
    if summary["pooled_uar_low"].isna().any():
        lines.append(f"no intervals where runs lack {PREDICTIONS_FILE} (per-clip test predictions)")
    return "\n".join(lines)


def _paired_columns(base: pd.DataFrame, other: pd.DataFrame, n_boot: int, level: float, seed: int) -> dict:
    """UAR(other) - UAR(base) on the clips both predicted, paired bootstrap, and McNemar's exact p."""
    key = ["fold", "clip_id"]
    both = base[key + ["label", "pred"]].merge(other[key + ["pred"]], on=key, suffixes=("_base", ""))
    if len(both) < max(len(base), len(other)):
        log.warning("paired comparison on the %d clips both runs predicted (of %d and %d)", len(both),
                    len(base), len(other))
    diff = paired_difference(both["label"], both["pred"], both["pred_base"], n_boot=n_boot, level=level, seed=seed)
    test = mcnemar(both["pred"] == both["label"], both["pred_base"] == both["label"])
    return {"uar_diff": 100 * diff["diff"], "uar_diff_low": 100 * diff["low"], "uar_diff_high": 100 * diff["high"],
            "fixed": test["a_only"], "broken": test["b_only"], "mcnemar_p": test["p"]}
