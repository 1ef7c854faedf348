"""Fusion ablation: does the fused model find the modality that carries the label?

    python benchmarks/fusion_ablation.py --data /tmp/fusion_data --out /tmp/fusion_runs
    python benchmarks/fusion_ablation.py ... --recipes old,default --seeds 0,1,2 --parallel 2

Builds four synthetic DFEW sets with `dfew_mm synth` (seeded): three single-cue sets where only the
face, only the posture or only the voice carries the label (the other modalities show a random
class per clip), and one where all three do (12% confusion per modality). Each set is extracted
once with the real extractor into a cached store under --data, and gets its own split files:
one fold, a stratified train/test split (`--test-share`, 30% by default). Then, for every seed,
it trains the single-modality references (video, pose, audio) with the default recipe and
`video,pose,audio` with every recipe (a recipe is a list of config overrides of configs/tiny.yaml,
see RECIPES), `--parallel` training processes at a time, one thread each. Runs that finished
before are reused, so an interrupted ablation resumes.

The table (also `--out/ablation.csv`) has one row per recipe and set: the fused model's test UAR
with the checkpoint selected on validation (`best.pt`), mean ± sd over the seeds, the same for
the last checkpoint, and the best single modality's UAR (per seed, the best of the three references;
mean ± sd), and the difference fused - best single with its worst seed. The criteria: on each
single-cue set fused >= best single - 5 points; on the all-cue set fused > every single modality.

Memorisation (`--gap-sets`, default face): for the fused runs on those sets, the face branch alone
(`dfew_mm evaluate --modalities video` on last.pt) is scored on its own training clips and on the
validation clips; the table's `face_gap` is train minus validation accuracy (points), mean ± sd, and
`face_gaps` lists it per seed (`face_gap_test`: train minus test accuracy). `--report` builds the table from the finished runs only (several
invocations with different --sets/--recipes share one --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from dfew_mm.datasets.dfew import TEST_DIR, TRAIN_DIR

SETS = {"face": "face", "pose": "pose", "audio": "audio", "all": "face,pose,audio"}
SINGLES = ("video", "pose", "audio")
FUSED = "video,pose,audio"
# Recipes: config overrides on top of configs/tiny.yaml. `default` is the shipped recipe (no
# overrides); `old` is the recipe before balanced training (transformer fusion alone, no auxiliary
# heads, no gradient modulation, no modality dropout); the others add one remedy to `old`.
OLD = ["model.fusion.mode=transformer", "model.fusion.member_weights=validation", "train.aux_weight=0",
       "train.ogm_alpha=0", "train.modality_dropout=0"]


def _with(*changes: str) -> list[str]:
    keys = {c.split("=")[0] for c in changes}
    return [o for o in OLD if o.split("=")[0] not in keys] + list(changes)


RECIPES: dict[str, list[str]] = {
    "old": OLD,
    "dropout0.5": _with("train.modality_dropout=0.5"),
    "aux": _with("train.aux_weight=1"),
    "aux+ogm_ge": _with("train.aux_weight=1", "train.ogm_alpha=0.5"),
    "video_lr0.3": _with("train.encoder_lr_scale.video=0.3"),
    "aux+video_lr0.3": _with("train.aux_weight=1", "train.encoder_lr_scale.video=0.3"),
    "late_equal": _with("model.fusion.mode=late", "model.fusion.member_weights=equal"),
    "late_val": _with("model.fusion.mode=late"),
    "both_val": _with("model.fusion.mode=both", "train.aux_weight=1", "train.modality_dropout=0.2"),
    "default": [],
}
# Training-time augmentation (docs/augmentation.md), on top of the default fusion recipe. A family "alone"
# keeps the horizontal flip, which every modality of a clip shares.
NO_AUG = ["data.augment=false", "train.mixup=0"]
AUG = ["data.augment=true", "train.mixup=0"]
FACE_AUG_OFF = ["model.video.aug.crop=1", "model.video.aug.rotate=0", "model.video.aug.brightness=0",
                "model.video.aug.contrast=0", "model.video.aug.saturation=0"]
POSE_AUG_OFF = ["model.pose.aug.jitter=0", "model.blendshapes.aug.jitter=0"]
AUDIO_AUG_OFF = ["model.audio.time_masks=0", "model.audio.freq_masks=0", "model.audio.gain_db=0"]
MIXUP = "train.mixup=0.2"
RECIPES.update({
    "noaug": NO_AUG,
    "aug": AUG,  # every family (faces, pose, blendshapes, audio and the flip), no mixup
    "aug_faces": AUG + POSE_AUG_OFF + AUDIO_AUG_OFF,
    "aug_pose": AUG + FACE_AUG_OFF + AUDIO_AUG_OFF,
    "aug_audio": AUG + FACE_AUG_OFF + POSE_AUG_OFF + ["data.hflip=0"],
    "mixup": NO_AUG[:1] + [MIXUP],
    "aug+mixup": AUG[:1] + [MIXUP],
    "aug+lowlight": AUG + ["model.video.aug.lowlight=0.3"],
    "both+aug": AUG + ["model.fusion.mode=both"],  # the transformer's head mixed with the unimodal heads
})


# The tiny config at 20 epochs, cut to 2 face/pose frames per clip (the synthetic cues hold still
# within a clip) so that an ablation fits on 2 shared CPU cores: the face CNN dominates the cost.
# The failure of the old recipe reproduces at this size.
COMMON = ["train.epochs=20", "data.num_workers=0", "data.frames=2"]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# -- data ----------------------------------------------------------------------------------------
def build_set(data: Path, name: str, args) -> tuple[Path, Path]:
    """Synthesise (once), extract (once) and split one set; returns (store, splits folder)."""
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import list_clips, run_extraction, select_clips
    from dfew_mm.synth import SynthConfig, generate_dataset, write_holdout_split

    root = data / name
    dfew = root / "dfew"
    if not (dfew / "synth_truth.csv").is_file():
        log(f"synth {name}: {args.clips} clips, cues {SETS[name]}")
        generate_dataset(dfew, SynthConfig(clips=args.clips, seed=args.data_seed, cues=SETS[name],
                                           seconds=args.seconds), workers=args.parallel)
    store = root / "features"
    if not (store / "manifest.csv").is_file() or len(pd.read_csv(store / "manifest.csv")) < args.clips:
        log(f"extract {name}")
        clips = select_clips(list_clips(dfew_root=dfew))
        options = ExtractOptions(frames=args.frames, face_size=args.face_size)
        run_extraction(clips, store, options, workers=args.parallel, assets_dir=args.assets_dir, progress=False)
    truth = pd.read_csv(dfew / "synth_truth.csv")
    return store, write_holdout_split(root / "splits", truth, args.test_share, args.data_seed)


# -- runs ----------------------------------------------------------------------------------------
def run_dir(out: Path, name: str, recipe: str, modalities: str, seed: int) -> Path:
    return out / name / recipe / modalities.replace(",", "+") / f"seed{seed}"


def train_job(job: tuple) -> tuple[Path, float]:
    """Train one run in its own process (one torch thread); skip it when it finished before."""
    out_dir, store, splits, modalities, seed, overrides, extra = job
    if (out_dir / "test_metrics.json").is_file():
        if extra.get("gap"):
            face_gap(out_dir, store)
        return out_dir, 0.0
    if out_dir.exists():  # an interrupted run: start it again
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    cmd = [sys.executable, "-m", "dfew_mm.cli", "train", "--config", "tiny", "--store", str(store),
           "--splits-dir", str(splits), "--modalities", modalities, "--out", str(out_dir), "--no-progress",
           f"train.seed={seed}", f"data.face_size={extra['face_size']}", *COMMON, *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    tic = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{out_dir.name}.log", "w") as logfile:
        code = subprocess.run(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"training failed ({code}): {' '.join(cmd)}; see {out_dir.parent / out_dir.name}.log")
    seconds = time.perf_counter() - tic
    if extra.get("gap"):
        face_gap(out_dir, store)
    return out_dir, seconds


def face_gap(out_dir: Path, store: Path) -> dict:
    """The face branch's accuracy (%) on the run's training and validation clips, last checkpoint; cached."""
    cached = out_dir / "face_gap.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    acc = {}
    for split in ("train", "val", "test"):
        out = out_dir / f"face_{split}.csv"
        subprocess.run([sys.executable, "-m", "dfew_mm.cli", "evaluate", "--checkpoint", str(out_dir / "last.pt"),
                        "--store", str(store), "--split", split, "--modalities", "video", "--device", "cpu",
                        "--out", str(out)], env=env, check=True, capture_output=True)
        metrics = json.loads(out.with_name(out.stem + ".metrics.json").read_text())
        acc[f"face_{split}"] = 100 * metrics["passes"][0]["war"]
    acc["face_gap"] = acc["face_train"] - acc["face_val"]
    acc["face_gap_test"] = acc["face_train"] - acc["face_test"]  # on the 105 test clips: less noisy
    cached.write_text(json.dumps(acc))
    return acc


def test_uar(path: Path) -> dict:
    metrics = json.loads((path / "test_metrics.json").read_text())
    return {"best": 100 * metrics["best"]["uar"], "last": 100 * metrics["last"]["uar"],
            "best_epoch": metrics["best"]["epoch"]}


# -- table ---------------------------------------------------------------------------------------
def mean_sd(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():5.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, set) from the per-run results."""
    singles = results[results["recipe"] == "single"]
    best_single = singles.groupby(["set", "seed"])["best"].max().rename("single")  # per seed: the best reference
    per_single = singles.pivot_table(index=["set", "seed"], columns="modalities", values="best")
    rows = []
    fused = results[results["recipe"] != "single"]
    for (recipe, name), group in fused.groupby(["recipe", "set"], sort=False):
        row = {"recipe": recipe, "set": name, "seeds": len(group),
               "fused_best": mean_sd(group["best"]), "fused_last": mean_sd(group["last"])}
        merged = group.merge(best_single.reset_index(), on=["set", "seed"])
        if len(merged):  # the single-modality references ran
            margin = merged["best"] - merged["single"]
            row.update(best_single=mean_sd(merged["single"]), diff=mean_sd(margin),
                       worst_seed_diff=round(float(margin.min()), 1))
            others = per_single.loc[name] if name in per_single.index.get_level_values(0) else None
            if others is not None:
                for m in SINGLES:
                    if m in others:
                        row[m] = mean_sd(others[m])
            target = (margin.mean() > 0) if name == "all" else (margin.mean() >= -5)
            row["meets"] = "yes" if target else "no"
        if "face_gap" in group and group["face_gap"].notna().any():
            ordered = group.sort_values("seed")
            row["face_gap"] = mean_sd(ordered["face_gap"].dropna())
            row["face_gaps"] = " ".join(f"{g:.1f}" for g in ordered["face_gap"])
            row["face_gap_test"] = mean_sd(ordered["face_gap_test"].dropna())
            row["face_gaps_test"] = " ".join(f"{g:.1f}" for g in ordered["face_gap_test"])
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="cache of synthetic sets and stores (outside the repo)")
    p.add_argument("--out", type=Path, required=True, help="run folders and ablation.csv")
    p.add_argument("--assets-dir", type=Path, default=os.environ.get("DFEW_MM_ASSETS"))
    p.add_argument("--sets", default=",".join(SETS), help="of " + ",".join(SETS))
    p.add_argument("--recipes", default="old,dropout0.5,aux,aux+ogm_ge,late_equal,default",
                   help="of " + ",".join(RECIPES) + " (default %(default)s)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clips", type=int, default=140)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--frames", type=int, default=8, help="frames extracted per clip")
    p.add_argument("--face-size", type=int, default=64, help="face crop side in the store (px)")
    p.add_argument("--test-share", type=float, default=0.3)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic sets")
    p.add_argument("--parallel", type=int, default=2, help="training processes at a time (one thread each)")
    p.add_argument("--no-singles", action="store_true", help="skip the single-modality references")
    p.add_argument("--prepare", action="store_true", help="only build the sets and stores")
    p.add_argument("--gap-sets", default="face",
                   help="sets whose fused runs get the face branch's train - validation accuracy gap ('' = none)")
    p.add_argument("--report", action="store_true", help="only tabulate the runs that finished before")
    p.add_argument("--grid", default="", help="set:recipe pairs (e.g. face:noaug,pose:aug_pose) instead of every "
                                              "recipe on every set; the runs go in this order, seed by seed")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (after the recipe)")
    args = p.parse_args()

    tic = time.perf_counter()
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    pairs = [tuple(item.strip().split(":")) for item in args.grid.split(",") if item.strip()]
    if pairs:
        names = list(dict.fromkeys(n for n, _ in pairs))
        recipes = list(dict.fromkeys(r for _, r in pairs))
    unknown = [r for r in recipes if r not in RECIPES] + [n for n in names if n not in SETS]
    if unknown:
        sys.exit(f"unknown recipe or set {unknown}: recipes {', '.join(RECIPES)}; sets {', '.join(SETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    data = {name: build_set(args.data, name, args) for name in names}
    if args.prepare:
        log(f"sets ready in {args.data} ({time.perf_counter() - tic:.0f} s)")
        return
    gap_sets = {n.strip() for n in args.gap_sets.split(",") if n.strip()}
    combos = pairs or [(name, recipe) for name in names for recipe in recipes]
    jobs, keys = [], []
    for seed in seeds:
        for name, recipe in combos:
            store, splits = data[name]
            extra = {"face_size": args.face_size, "gap": name in gap_sets}
            jobs.append((run_dir(args.out, name, recipe, FUSED, seed), store, splits, FUSED, seed,
                         RECIPES[recipe] + list(args.overrides), extra))
            keys.append((name, recipe, FUSED, seed))
        for name in names if not args.no_singles else []:
            store, splits = data[name]
            for m in SINGLES:
                jobs.append((run_dir(args.out, name, "single", m, seed), store, splits, m, seed,
                             list(args.overrides), {"face_size": args.face_size}))
                keys.append((name, "single", m, seed))
    if args.report:
        kept = [i for i, job in enumerate(jobs) if (job[0] / "test_metrics.json").is_file()]
        jobs, keys = [jobs[i] for i in kept], [keys[i] for i in kept]
    log(f"{len(jobs)} runs, {args.parallel} at a time")
    rows = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for (name, recipe, mods, seed), (path, seconds) in zip(keys, pool.map(train_job, jobs)):
            gap = json.loads((path / "face_gap.json").read_text()) if (path / "face_gap.json").is_file() else {}
            rows.append({"set": name, "recipe": recipe, "modalities": mods, "seed": seed, **test_uar(path),
                         **gap, "train_s": round(seconds, 1)})
            log(f"{name:5s} {recipe:12s} {mods:16s} seed {seed}: best {rows[-1]['best']:.1f} "
                f"last {rows[-1]['last']:.1f} ({seconds:.0f} s)")
    results = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out / "ablation_runs.csv", index=False)
    table = summarise(results)
    table.to_csv(args.out / "ablation.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False))
    for name, (_, splits) in data.items():
        n_train = len(pd.read_csv(splits / TRAIN_DIR / "set_1.csv"))
        n_test = len(pd.read_csv(splits / TEST_DIR / "set_1.csv"))
        print(f"{name}: {n_train} train clips (of which tiny's val_fraction go to validation), {n_test} test clips")
    print(f"total {time.perf_counter() - tic:.0f} s")


if __name__ == "__main__":
    main()
