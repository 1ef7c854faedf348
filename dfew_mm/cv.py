"""5-fold cross-validation: one training run per fold, then a per-fold and mean ± std table."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from dfew_mm.config import ExperimentConfig
from dfew_mm.errors import DfewMMError

log = logging.getLogger(__name__)


def fold_config(cfg: ExperimentConfig, fold: int, out_dir: Path) -> ExperimentConfig:
    data = dataclasses.replace(cfg.data, fold=fold)
    train = dataclasses.replace(cfg.train, out_dir=str(out_dir / f"fold_{fold}"))
    return dataclasses.replace(cfg, data=data, train=train)


def summary_table(out_dir: Path, folds: Sequence[int]) -> pd.DataFrame:
    """UAR/WAR (%) of the selected (best-on-validation) and last checkpoints per fold, plus mean and std."""
    rows = []
    for k in folds:
        path = out_dir / f"fold_{k}" / "test_metrics.json"
        if not path.is_file():
            raise DfewMMError(f"{path} is missing: fold {k} has not finished")
        result = json.loads(path.read_text())
        rows.append({"fold": str(k), "uar": 100 * result["best"]["uar"], "war": 100 * result["best"]["war"],
                     "best_epoch": result["best"]["epoch"] + 1,
                     "uar_last": 100 * result["last"]["uar"], "war_last": 100 * result["last"]["war"]})
    table = pd.DataFrame(rows)
    metrics = ["uar", "war", "uar_last", "war_last"]
    mean = {"fold": "mean", **table[metrics].mean().to_dict()}
    std = {"fold": "std", **table[metrics].std(ddof=1 if len(table) > 1 else 0).to_dict()}
    return pd.concat([table, pd.DataFrame([mean, std])], ignore_index=True)


def format_summary(table: pd.DataFrame) -> str:
    per_fold = table[~table["fold"].isin(["mean", "std"])].astype({"best_epoch": int})
    mean, std = table.set_index("fold").loc["mean"], table.set_index("fold").loc["std"]
    lines = [per_fold.to_string(index=False, float_format=lambda x: f"{x:.2f}"), "",
             f"UAR {mean['uar']:.2f} ± {std['uar']:.2f}   WAR {mean['war']:.2f} ± {std['war']:.2f}   "
             f"(checkpoint chosen on validation UAR; last epoch: UAR {mean['uar_last']:.2f} ± "
             f"{std['uar_last']:.2f}, WAR {mean['war_last']:.2f} ± {std['war_last']:.2f})"]
    return "\n".join(lines)


def cross_validate(cfg: ExperimentConfig, folds: Sequence[int], out_dir: str | Path) -> pd.DataFrame:
    """Train every fold into OUT/fold_k (finished folds are kept, interrupted ones resumed) and write
    OUT/cv_summary.csv and OUT/cv_summary.txt. Returns the table."""
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
        train(fold_cfg, resume=(run / "last.pt").is_file())
    table = summary_table(out_dir, folds)
    if setup_distributed(cfg.train.device).main:
        table.to_csv(out_dir / "cv_summary.csv", index=False, float_format="%.4f")
        (out_dir / "cv_summary.txt").write_text(format_summary(table) + "\n")
    return table


def modality_subsets(modalities: Sequence[str]) -> list[list[str]]:
    """Every non-empty subset, singletons first: [[video], [pose], ..., [video, pose, audio]]."""
    return [list(c) for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def sweep(cfg: ExperimentConfig, folds: Sequence[int], out_dir: str | Path) -> pd.DataFrame:
    """Cross-validate every non-empty subset of `cfg.model.modalities` into OUT/<a+b>/fold_k and write
    OUT/sweep_summary.{csv,txt}: one row per subset with mean ± std test UAR and WAR over the folds."""
    from dfew_mm.distributed import setup_distributed

    out_dir = Path(out_dir)
    rows = []
    for subset in modality_subsets(cfg.model.modalities):
        name = "+".join(subset)
        sub_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, modalities=subset))
        table = cross_validate(sub_cfg, folds, out_dir / name).set_index("fold")
        rows.append({"modalities": name, "folds": len(folds),
                     "uar": table.at["mean", "uar"], "uar_std": table.at["std", "uar"],
                     "war": table.at["mean", "war"], "war_std": table.at["std", "war"]})
    summary = pd.DataFrame(rows)
    if setup_distributed(cfg.train.device).main:
        summary.to_csv(out_dir / "sweep_summary.csv", index=False, float_format="%.4f")
        text = "\n".join(f"{r.modalities:18s} UAR {r.uar:6.2f} ± {r.uar_std:5.2f}   WAR {r.war:6.2f} ± {r.war_std:5.2f}"
                         for r in summary.itertuples())
        (out_dir / "sweep_summary.txt").write_text(f"test fold metrics (%), folds {list(folds)}\n{text}\n")
    return summary
