"""Audio ablation on real speech: which parts of `tiny`'s audio recipe make it learn vocal emotion?

    python benchmarks/audio_ablation.py --store S --root ../shared/data/ravdess_speech --out R
    python benchmarks/audio_ablation.py ... --recipes tiny,specaugment --folds 1,2
    python benchmarks/audio_ablation.py ... --report

Every recipe is `dfew_mm cv --config tiny --modalities audio` over the copy's speaker-independent
folds with `train.epochs=30` and its overrides (RECIPES): `tiny` as shipped, then one factor changed at
a time (the evaluation window, the normalisation, SpecAugment, the GRU, the window length, the
backbone), the recipe `tiny` shipped before (`old_tiny`), and `tiny` with another seed (how much a seed
moves the figures). Recipes run one after another; a recipe whose `cv_summary.csv` exists is reused,
so an interrupted ablation resumes (`cv` itself resumes finished folds).

The table (also `--out/audio_ablation.csv`): pooled test UAR and WAR over the folds' test clips with
95% bootstrap intervals, the UAR of each fold, and each recipe's UAR minus `tiny`'s on the same clips
with a paired bootstrap interval (dfew_mm.stats.paired_difference).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dfew_mm.cv import pooled_predictions
from dfew_mm.stats import format_interval, paired_difference

COMMON = ["train.epochs=30"]
RECIPES: dict[str, list[str]] = {
    "tiny": [],
    "eval_first": ["model.audio.eval_window=first"],
    "eval_centre": ["model.audio.eval_window=centre"],
    "norm_dataset": ["model.audio.normalise=dataset"],
    "norm_level": ["model.audio.normalise=level"],
    "specaugment": ["model.audio.time_masks=2", "model.audio.freq_masks=2"],
    "no_gru": ["model.audio.arch_kwargs.gru=false"],
    "window_2s": ["data.audio_frames=200", "model.audio.max_length=208"],
    "ast": ["model.audio.arch=ast", "model.audio.num_layers=2"],  # tiny's earlier 2-layer AST, same settings
    "old_tiny": ["model.audio.arch=ast", "model.audio.num_layers=2", "model.audio.eval_window=first",
                 "model.audio.normalise=dataset", "data.audio_frames=200", "model.audio.max_length=208",
                 "data.augment=false"],
    "seed1": ["train.seed=1"],
}
BASE = "tiny"


def run_recipe(name: str, args) -> None:
    out = args.out / name
    if (out / "cv_summary.csv").is_file():
        return
    cmd = [sys.executable, "-m", "dfew_mm.cli", "cv", "--config", "tiny", "--modalities", "audio",
           "--store", str(args.store), "--dataset", args.dataset, "--root", str(args.root), "--folds", args.folds,
           "--out", str(out), "--no-progress", *COMMON, *RECIPES[name], *args.overrides]
    print(f"{name}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)


def fold_numbers(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in out.glob("fold_*") if (p / "test_metrics.json").is_file())


def table(names: list[str], out: Path) -> pd.DataFrame:
    """One row per finished recipe: pooled UAR/WAR with intervals, per-fold UAR, paired difference to BASE."""
    base = None
    if (out / BASE / "cv_summary.csv").is_file():
        base = pooled_predictions(out / BASE, fold_numbers(out / BASE))
    rows = []
    for name in names:
        path = out / name / "cv_summary.csv"
        if not path.is_file():
            continue
        summary = pd.read_csv(path, dtype={"fold": str}).set_index("fold")
        pooled, folds = summary.loc["pooled"], fold_numbers(out / name)
        row = {"recipe": name, "folds": len(folds), "n": int(pooled["n"]),
               "UAR": format_interval(pooled["uar"] / 100, pooled["uar_low"] / 100, pooled["uar_high"] / 100),
               "WAR": format_interval(pooled["war"] / 100, pooled["war_low"] / 100, pooled["war_high"] / 100),
               "fold UARs": " / ".join(f"{summary.loc[str(k), 'uar']:.1f}" for k in folds)}
        row[f"UAR - {BASE}"] = ""
        if base is not None and name != BASE:
            pred = pooled_predictions(out / name, folds)
            both = base.merge(pred, on="clip_id", suffixes=("_base", ""))
            d = paired_difference(both["label"], both["pred"], both["pred_base"])
            row[f"UAR - {BASE}"] = f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True, help="feature store of the speech copy")
    p.add_argument("--root", type=Path, required=True, help="the copy with its split files (DFEW layout)")
    p.add_argument("--dataset", default="dfew", help="its protocol (default dfew: 5 folds)")
    p.add_argument("--out", type=Path, required=True, help="one cv folder per recipe, and the table")
    p.add_argument("--folds", default="1-5")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--report", action="store_true", help="only the table, from the recipes that finished")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="added to every recipe")
    args = p.parse_args(argv)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r}: choose from {', '.join(RECIPES)}")
    if not args.report:
        for name in names:
            run_recipe(name, args)
    result = table(names, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    result.to_csv(args.out / "audio_ablation.csv", index=False)
    print(result.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
