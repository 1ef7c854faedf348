"""`dfew_mm` command line: parses arguments and calls library functions, nothing more.

Each subcommand is a pair `_add_<name>(subparsers)` / `_run_<name>(args)` registered in COMMANDS.
Library imports happen inside the `_run_*` functions so that `--help` stays fast; defaults are
read from the library's dataclasses, never restated here.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from dfew_mm.errors import DfewMMError

log = logging.getLogger("dfew_mm")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(sub, name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=_examples(*examples),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are only drawn on a terminal in any case)")
    return p


def _parse_folds(text: str) -> tuple[int, ...]:
    """'1-5' -> (1, 2, 3, 4, 5); '1,3' -> (1, 3)."""
    folds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            folds.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"folds '{text}' should look like 1-5 or 1,3") from None
    if not folds:
        raise argparse.ArgumentTypeError(f"folds '{text}' name no fold; e.g. 1-5 or 1,3")
    return tuple(folds)


def _check_numbers(args, positive: Sequence[str] = (), **bounds: tuple[float, float | None]) -> None:
    """One-line errors for numeric options outside [low, high] (high None: no upper bound) or, for
    `positive`, not above 0; options left unset pass."""
    import math

    from dfew_mm.errors import ConfigError

    checks = [(name, low, high, False) for name, (low, high) in bounds.items()]
    checks += [(name, 0, None, True) for name in positive]
    for name, low, high, strict in checks:
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (strict and value == low) or (high is not None and value > high):
            flag = "--" + name.replace("_", "-")
            allowed = (f"{low:g}..{high:g}" if high is not None else f"above {low:g}" if strict
                       else f"at least {low:g}")
            raise ConfigError(f"{flag} {value:g}: must be {allowed}")


# -- datasets --------------------------------------------------------------------------------
def _add_dataset_args(p: argparse.ArgumentParser, roots: bool = True, dataset_help: str = "") -> None:
    """--dataset, and with `roots` --root / --dfew-root (the copy) and --splits-dir."""
    from dfew_mm.datasets import DATASETS, DEFAULT_DATASET

    p.add_argument("--dataset", help=dataset_help or f"{' | '.join(DATASETS)}: classes, layout, split files and "
                   f"protocol (default {DEFAULT_DATASET}; docs/datasets.md)")
    if roots:
        p.add_argument("--root", type=Path, help="the dataset's copy (its layout: docs/datasets.md)")
        p.add_argument("--dfew-root", type=Path, help="a DFEW copy (--dataset dfew --root DIR)")
        p.add_argument("--splits-dir", type=Path, help="folder with the split files, if not under the root")


def _dataset(args, required: bool = True):
    """The dataset of --dataset bound to --root (or --dfew-root) and --splits-dir; None when not `required`
    and neither a root nor a split folder is given."""
    from dfew_mm.datasets import DEFAULT_DATASET, open_dataset
    from dfew_mm.errors import ConfigError

    name = args.dataset or DEFAULT_DATASET
    if args.dfew_root is not None and name != "dfew":
        raise ConfigError(f"--dfew-root names a DFEW copy: give the {name} copy with --root")
    root = args.root or args.dfew_root
    if not required and root is None and args.splits_dir is None:
        return None
    return open_dataset(name, root, args.splits_dir)


# -- folds ---------------------------------------------------------------------------------
def _add_folds(sub) -> None:
    p = _parser(sub, "folds", "Validate a dataset copy and print per-fold clip counts and class distribution.",
                "dfew_mm folds --dfew-root /data/DFEW",
                "dfew_mm folds --splits-dir ../shared/data/dfew_splits",
                "dfew_mm folds --dataset mafw --root /data/MAFW",
                "dfew_mm folds --dataset ferv39k --root /data/FERV39k")
    _add_dataset_args(p)
    p.add_argument("--folds", type=_parse_folds, help="e.g. 1-5 or 1,3 (default: all folds of the dataset)")


def _run_folds(args) -> int:
    import pandas as pd

    from dfew_mm.datasets.base import fold_summary, natural_key, unique_clips

    dataset = _dataset(args)
    folds = dataset.load_folds(args.folds)
    clip_files, face_frames = None, {}
    if dataset.root is not None:  # a copy may lack the originals or the face frames, not both
        clip_files, face_frames = dataset.clip_sources()
    videos = {} if clip_files is None and dataset.clip_dir else clip_files
    table = fold_summary(folds, dataset.classes, videos, face_frames)
    print(f"{dataset.title}: {dataset.protocol()}, {len(dataset.classes)} classes ({', '.join(dataset.classes)})")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False))
    ids = unique_clips(folds)
    print(f"\n{len(folds)} fold{'s' if len(folds) > 1 else ''} over {len(ids):,} unique clips")
    if dataset.root is None:
        return 0
    if dataset.clip_dir:
        have = int(ids.isin(list(clip_files or {})).sum())
        where = "" if clip_files is not None else " (no such folder: pose and audio need the originals)"
        print(f"{have:,} of {len(ids):,} listed clips have a video file under {dataset.root / dataset.clip_dir}{where}")
    for name, folders in face_frames.items():
        have = int(ids.isin(list(folders)).sum())
        print(f"{have:,} of {len(ids):,} listed clips have face frames under "
              f"{dataset.root / dataset.face_sources[name].folder} (--face-source {name})")
    unlisted = sorted(set(clip_files or {}).union(*face_frames.values()) - set(ids), key=natural_key)
    if unlisted:
        print(f"{len(unlisted):,} clips of the copy are in no split file (e.g. {', '.join(unlisted[:5])})")
    return 0


# -- synth ---------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    from dfew_mm.synth import SynthConfig

    defaults = SynthConfig()
    p = _parser(sub, "synth", "Write a synthetic dataset in a dataset's exact layout (H.264 + AAC clips or face "
                "frames, split files).",
                "dfew_mm synth --out /tmp/synth --clips 60",
                "dfew_mm synth --dataset mafw --out /tmp/mafw --clips 66",
                "dfew_mm synth --dataset ferv39k --out /tmp/ferv39k --clips 35",
                "dfew_mm synth --out /tmp/synth --clips 200 --dark-share 0.4 --seed 1",
                "dfew_mm synth --out /tmp/audio_only --clips 140 --cues audio   # only the voice carries the label",
                "dfew_mm synth --out /tmp/frames_only --clips 60 --face-frames --no-originals   # DFEW's face frames")
    p.add_argument("--out", type=Path, required=True, help="folder to create (the dataset's root layout)")
    _add_dataset_args(p, roots=False)
    p.add_argument("--clips", type=int, default=defaults.clips, help="number of clips (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="(default %(default)s)")
    p.add_argument("--dark-share", type=float, default=defaults.dark_share,
                   help="share of low-light clips (default %(default)s)")
    p.add_argument("--seconds", type=float, default=defaults.seconds, help="clip length in seconds (default %(default)s)")
    p.add_argument("--cues", default=",".join(defaults.cues),
                   help="modalities that carry the label, any of face,pose,audio; the others show a random class "
                        "per clip (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="parallel encoder processes (default %(default)s)")
    p.add_argument("--face-frames", action=argparse.BooleanOptionalAction, default=defaults.face_frames,
                   help="also write the dataset's face frame folders, DFEW's Clip/clip_224x224/<id>/ (every frame) and "
                        "Clip/clip_224x224_16f/<id>/ (16 frames); a dataset that ships only face frames (FERV39k) "
                        "always gets them (default %(default)s)")
    p.add_argument("--originals", action=argparse.BooleanOptionalAction, default=defaults.originals,
                   help="write the original clips (DFEW: Clip/original/<id>.mp4); --no-originals with --face-frames "
                        "gives a copy of face frames and split files only (default %(default)s)")


def _run_synth(args) -> int:
    from dfew_mm.synth import SynthConfig, generate_dataset

    _check_numbers(args, ["seconds"], clips=(1, None), workers=(1, None), dark_share=(0, 1))

    cfg = SynthConfig(clips=args.clips, seed=args.seed, dark_share=args.dark_share, seconds=args.seconds,
                      cues=args.cues, face_frames=args.face_frames, originals=args.originals,
                      **({"dataset": args.dataset} if args.dataset else {}))
    summary = generate_dataset(args.out, cfg, workers=args.workers)
    print(f"wrote {summary['clips']} clips ({summary['dark']} low-light; label shown by {'+'.join(cfg.cues)}) "
          f"to {args.out} in the {cfg.dataset} layout")
    return 0


# -- evaluate --------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = _parser(sub, "evaluate", "Evaluate a checkpoint on a fold: predictions CSV (one row per clip) + metrics JSON.",
                "dfew_mm evaluate --checkpoint runs/f1/best.pt --store features --fold 1 --out preds/f1.csv",
                "dfew_mm evaluate --checkpoint runs/f1/best.pt --store features --modalities video+pose "
                "--darken 0,0.25,0.5,0.75,1 --out preds/f1_vp.csv",
                "dfew_mm evaluate --checkpoint runs/f1/best.pt --store features --attribution --out preds/f1.csv")
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/best.pt from `dfew_mm train`")
    p.add_argument("--store", type=Path, required=True,
                   help="feature store from preprocess/extract.py; one extracted with --darken S gives scene-level "
                        "passes labelled scene:S")
    p.add_argument("--fold", type=int, help="a fold of the dataset's protocol (default: the fold the run trained on)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--modalities", help="subset of the trained modalities, e.g. video or video+pose (default: all)")
    p.add_argument("--darken", default="0",
                   help="crop-level low light, strength(s) 0..1: darken the stored face crops at evaluation time, a "
                        "fast approximation that leaves detection and pose untouched (scene level: extract a store "
                        "with --darken). 0.5, a list 0,0.5,1 or a range 0:1:0.25, one pass each; default 0 = none")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV; metrics go to <stem>.metrics.json")
    p.add_argument("--attribution", action="store_true",
                   help="also evaluate with each modality masked out and add reliance_<modality> columns: how much "
                        "each clip's prediction leaned on it (needs at least two modalities)")
    _add_dataset_args(p, dataset_help="the dataset of the fold lists (default: the run's; its classes must be the "
                      "checkpoint's)")
    p.add_argument("--allow-missing", action="store_true", help="leave out fold clips missing from the store")
    p.add_argument("--batch-size", type=int, help="default: the run's batch size")
    p.add_argument("--workers", type=int, help="data loader worker processes (default: the run's data.num_workers)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available")


def _run_evaluate(args) -> int:
    from dfew_mm.evaluate import evaluate, metrics_path_for
    from dfew_mm.metrics import format_metrics

    _check_numbers(args, fold=(1, None), batch_size=(1, None), workers=(0, None))

    result = evaluate(args.checkpoint, args.store, args.fold, args.split, args.modalities, args.darken, args.out,
                      dfew_root=args.dfew_root, splits_dir=args.splits_dir, allow_missing=args.allow_missing,
                      batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                      attribution=args.attribution, root=args.root, dataset=args.dataset)
    for p in result["passes"]:
        leaned = "".join(f"  reliance {m} {v:+.3f}" for m, v in p.get("mean_reliance", {}).items())
        print(f"{p['modalities']:<18} {p['perturbation']:<12} {format_metrics(p)}{leaned}")
    print(f"predictions: {args.out}\nmetrics:     {metrics_path_for(args.out)}")
    return 0


# -- predict ---------------------------------------------------------------------------------
def _add_predict(sub) -> None:
    p = _parser(sub, "predict", "Predict the emotion of new video clips (extraction runs in memory).",
                "dfew_mm predict clip.mp4 --checkpoint runs/f1/best.pt",
                "dfew_mm predict a.mp4 b.flv --checkpoint runs/f1/best.pt --json --assets-dir models/")
    p.add_argument("clips", nargs="+", type=Path, metavar="CLIP", help="video files")
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/best.pt from `dfew_mm train`")
    p.add_argument("--modalities", help="subset of the trained modalities (default: all)")
    p.add_argument("--top", type=int, default=3, help="emotions to show per clip (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON list of per-clip results")
    p.add_argument("--assets-dir", type=Path, help="folder with the MediaPipe model files (or set DFEW_MM_ASSETS)")


def _run_predict(args) -> int:
    import json

    from dfew_mm.predict import format_result, predict_clips

    _check_numbers(args, top=(1, None))

    results = predict_clips(args.clips, args.checkpoint, args.assets_dir, args.modalities, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(format_result(result))
    failed = sum(not r["ok"] for r in results)
    if failed:
        print(f"{failed} of {len(results)} clips could not be read", file=sys.stderr)
    return 1 if failed else 0


# -- extract ---------------------------------------------------------------------------------
def _add_extract(sub) -> None:
    from dfew_mm.extract.options import DEFAULT_CLIP_TIMEOUT_S, FACE_MODELS, POSE_MODELS, ExtractOptions

    defaults = ExtractOptions()
    p = _parser(sub, "extract", "Extract face crops, body pose, audio fbank and quality stats into a feature store.",
                "dfew_mm extract --dfew-root /data/DFEW --out features --workers 8",
                "dfew_mm extract --dfew-root /data/DFEW --out features --shard 0/16   # one job of an array",
                "dfew_mm extract --dfew-root /data/DFEW --out features_16f --face-source clip_224x224_16f",
                "dfew_mm extract --clips-dir my_videos --out my_features --assets-dir mediapipe_models",
                "dfew_mm extract --dataset mafw --root /data/MAFW --out features_mafw --workers 8",
                "dfew_mm extract --dataset ferv39k --root /data/FERV39k --out features_ferv39k   # its face frames",
                "dfew_mm extract --dfew-root /data/DFEW --out features_dark0.5 --split test --fold 1 --darken 0.5")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", type=Path,
                     help="the --dataset copy (its layout: docs/datasets.md); ids are its store ids")
    src.add_argument("--dfew-root", type=Path,
                     help="DFEW root with Clip/original/<id>.mp4 and/or face frames (ids become '42')")
    src.add_argument("--clips-dir", type=Path, help="any folder of videos (ids are the file stems)")
    _add_dataset_args(p, roots=False)
    p.add_argument("--out", type=Path, required=True, help="feature store folder (created; resumed if present)")
    p.add_argument("--face-source", metavar="SOURCE",
                   help="where faces come from: 'detect' runs the face detector on the original clips; the name of a "
                        "face frame folder the dataset distributes (DFEW: clip_224x224, every frame, or "
                        "clip_224x224_16f, 16 frames; FERV39k: 2_ClipsforFaceCrop) reads those frames instead, pose "
                        "and audio still from the original where there is one (docs/face_sources.md). Default: "
                        f"{defaults.face_source} where the dataset ships original clips, else its face frames")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one per core (default 1)")
    p.add_argument("--frames", type=int, default=defaults.frames,
                   help="frames T sampled uniformly per clip (default %(default)s)")
    p.add_argument("--face-size", type=int, default=defaults.face_size, help="face crop side S in px (default %(default)s)")
    p.add_argument("--ids", nargs="+", metavar="ID", help="only these clip ids")
    p.add_argument("--limit", type=int, help="at most this many clips (after --ids and --shard)")
    p.add_argument("--shard", help="i/n: this job's share of the clips (0 <= i < n), for job arrays")
    p.add_argument("--split", choices=("train", "test"),
                   help="only the clips of this split of --fold (DFEW split files; combines with --ids, --shard, "
                        "--limit)")
    p.add_argument("--fold", type=int, help="fold of --split (1..5 for DFEW and MAFW, 1 for FERV39k)")
    p.add_argument("--splits-dir", type=Path,
                   help="folder with the dataset's split files for --split (default: under the root)")
    p.add_argument("--darken", type=float, default=defaults.darken, metavar="S",
                   help="scene-level low light, strength 0..1: darken the full decoded frames before face detection "
                        "and pose (gain, gamma, sensor noise; dfew_mm.lowlight); write each strength to its own "
                        "--out (default %(default)g = off)")
    p.add_argument("--darken-seed", type=int, default=defaults.darken_seed,
                   help="seed of the darkening noise, drawn per clip from (seed, clip id) (default %(default)s)")
    p.add_argument("--assets-dir", type=Path,
                   help="folder with the MediaPipe model files (else $DFEW_MM_ASSETS, else download to a cache)")
    p.add_argument("--pose-model", choices=POSE_MODELS, default=defaults.pose_model,
                   help="PoseLandmarker variant (default %(default)s)")
    p.add_argument("--face-model", choices=FACE_MODELS, default=defaults.face_model,
                   help="FaceDetector variant; auto runs both and keeps the better track per clip (default %(default)s)")
    p.add_argument("--blendshapes", action=argparse.BooleanOptionalAction, default=defaults.blendshapes,
                   help="also store FaceLandmarker blendshapes (T, 52) (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="redo clips that are already extracted")
    p.add_argument("--add-waveform", action="store_true",
                   help="only add the 16 kHz waveform (store format 2, read by waveform speech encoders) to the "
                        "clips of an --out store written before it existed; faces and pose are kept")
    p.add_argument("--clip-timeout", type=float, default=DEFAULT_CLIP_TIMEOUT_S, metavar="S",
                   help="seconds one clip may take; a worker that runs longer is stopped and the clip recorded "
                        "as failed (default %(default)g)")


def _run_extract(args) -> int:
    from dfew_mm.constants import FACE_SOURCE_DETECT, MAX_FACE_SIZE, MAX_FRAMES, MIN_FACE_SIZE
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import list_clips, parse_shard, run_extraction, select_clips, split_clip_ids

    from dfew_mm.errors import ConfigError

    _check_numbers(args, ["clip_timeout"], workers=(1, None), limit=(1, None), frames=(1, MAX_FRAMES),
                   face_size=(MIN_FACE_SIZE, MAX_FACE_SIZE), darken=(0, 1), fold=(1, None), darken_seed=(0, None))
    if (args.split is None) != (args.fold is None):
        raise ConfigError("--split and --fold go together, e.g. --split test --fold 1")
    if args.split and args.clips_dir is not None and args.splits_dir is None:
        raise ConfigError("--split needs the dataset's split files: give --splits-dir (or use --root)")
    dataset = _dataset(args, required=False)
    source = args.face_source or (dataset.default_face_source() if dataset is not None and args.clips_dir is None
                                  else FACE_SOURCE_DETECT)
    try:
        shard = parse_shard(args.shard) if args.shard else None
        options = ExtractOptions(frames=args.frames, face_size=args.face_size, face_model=args.face_model,
                                 pose_model=args.pose_model, blendshapes=args.blendshapes, darken=args.darken,
                                 darken_seed=args.darken_seed, face_source=source)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    source_of = {"clips_dir": args.clips_dir} if args.clips_dir is not None else {"dataset": dataset}
    if args.add_waveform:
        from dfew_mm.extract.add_waveform import add_waveform

        print(add_waveform(list_clips(**source_of), args.out).line())
        return 0
    split_ids, split_name = None, "the split"
    if args.split:
        split_ids = split_clip_ids(args.fold, args.split, dataset=dataset)
        split_name = f"fold {args.fold}'s {args.split} split"
    clips = select_clips(list_clips(**source_of, face_source_name=source), args.ids, shard, args.limit,
                         split_ids=split_ids, split_name=split_name,
                         dataset=dataset if args.clips_dir is None else None)
    if not clips:
        where = f" in {split_name}" if args.split else ""
        print(f"error: no clips selected from {args.root or args.dfew_root or args.clips_dir}{where}", file=sys.stderr)
        return 2
    summary = run_extraction(clips, args.out, options, workers=args.workers, assets_dir=args.assets_dir,
                             overwrite=args.overwrite, clip_timeout=args.clip_timeout)
    for line in summary.lines():
        print(line)
    print(f"manifest: {args.out / 'manifest.csv'}")
    if summary.interrupted:
        return 130
    return 0 if summary.succeeded() else 1


# -- train / cv ------------------------------------------------------------------------------
def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default", help="configs/<name>.yaml or a path (default: default)")
    p.add_argument("--modalities", help="comma-separated modalities, e.g. video,pose (default: the config's; an "
                   "unknown name lists the valid ones, a store lacking a modality's arrays says how to extract them)")
    p.add_argument("--store", help="feature store (data.store)")
    p.add_argument("--dataset", help="dfew | mafw | ferv39k: classes, split files, protocol (data.dataset)")
    p.add_argument("--root", help="the dataset's copy with its split files (data.root)")
    p.add_argument("--dfew-root", help="DFEW copy with the split files (data.dfew_root)")
    p.add_argument("--splits-dir", help="split files elsewhere than under the root (data.splits_dir)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out split clips missing from the store (listed in excluded_clips.csv)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")


def _experiment_config(args, extra: Sequence[str] = ()):
    from dfew_mm.config import load_config
    from dfew_mm.models import resolve_modalities

    overrides = list(args.overrides)
    if args.modalities is not None:
        overrides.append(f"model.modalities=[{','.join(resolve_modalities(args.modalities))}]")
    for flag, key in (("store", "data.store"), ("dataset", "data.dataset"), ("root", "data.root"),
                      ("dfew_root", "data.dfew_root"), ("splits_dir", "data.splits_dir")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.allow_missing:
        overrides.append("data.allow_missing=true")
    return load_config(args.config, overrides + list(extra))  # checks each encoder's settings too


def _add_train(sub) -> None:
    p = _parser(sub, "train", "Train one fold from a feature store; writes checkpoints and metrics to a run directory.",
                "dfew_mm train --config tiny --modalities video,pose --store features/synth --dfew-root synth",
                "dfew_mm train --config default --fold 2 --out runs/f2 train.epochs=20",
                "dfew_mm train --resume runs/f2            # continue an interrupted run exactly",
                "torchrun --nproc_per_node 4 -m dfew_mm.cli train --config default   # multi-GPU")
    _add_experiment_args(p)
    p.add_argument("--fold", type=int, help="a fold of the dataset's protocol (data.fold)")
    p.add_argument("--out", help="run directory (train.out_dir)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last.pt with its saved config")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs (resume later)")


def _run_train(args) -> int:
    from dfew_mm.config import load_config
    from dfew_mm.train import train

    _check_numbers(args, stop_after=(1, None))
    extra = [f"data.fold={args.fold}"] if args.fold is not None else []
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise DfewMMError(f"--resume {run}: no config.yaml there; is it a run directory?")
        cfg = load_config(run / "config.yaml", list(args.overrides) + extra + [f"train.out_dir={run}"])
    else:
        cfg = _experiment_config(args, extra + ([f"train.out_dir={args.out}"] if args.out else []))
    run_dir = train(cfg, resume=bool(args.resume), stop_after_epochs=args.stop_after)
    if not _finish_distributed():
        return 0
    metrics = run_dir / "test_metrics.json"
    if metrics.is_file():
        import json

        from dfew_mm.metrics import format_metrics

        result = json.loads(metrics.read_text())
        print(f"test fold {cfg.data.fold}: best {format_metrics(result['best'])} | last {format_metrics(result['last'])}")
    print(f"run directory: {run_dir}")
    return 0


def _add_cv(sub) -> None:
    p = _parser(sub, "cv", "Run the dataset's protocol (5 folds for DFEW and MAFW, the fixed split of FERV39k) and "
                "write a per-fold and mean ± std table of UAR and WAR.",
                "dfew_mm cv --config default --folds 1-5 --out runs/cv_all",
                "dfew_mm cv --config tiny --folds 1,2 --modalities pose,audio --out runs/cv_tiny",
                "dfew_mm cv --dataset mafw --root /data/MAFW --store features_mafw --out runs/cv_mafw",
                "dfew_mm cv --config default --folds 1-5 --out runs/cv_all --best-test-epoch   # + papers' protocol")
    _add_experiment_args(p)
    p.add_argument("--folds", type=_parse_folds, help="e.g. 1-5 or 1,3 (default: all folds of the dataset)")
    p.add_argument("--out", required=True, help="folder for fold_k/ runs and cv_summary.{csv,txt}")
    p.add_argument("--best-test-epoch", action="store_true",
                   help="also evaluate the test fold after every epoch and report, labelled optimistic, the UAR/WAR "
                        "of the epoch best on the test fold (what many DFEW papers report) beside the honest "
                        "figure of the checkpoint chosen on validation; selection and training are unchanged")


def _run_cv(args) -> int:
    from dfew_mm.cv import cross_validate, format_summary

    from dfew_mm.datasets import get_dataset

    cfg = _experiment_config(args)
    table = cross_validate(cfg, args.folds or get_dataset(cfg.data.dataset).folds, args.out,
                           best_test_epoch=args.best_test_epoch)
    if not _finish_distributed():
        return 0
    print(format_summary(table))
    print(f"summary: {Path(args.out) / 'cv_summary.txt'}")
    return 0


def _add_embed(sub) -> None:
    p = _parser(sub, "embed", "Run the encoders of the cacheable modalities (e.g. video, audio) once over a store and "
                "cache their tokens, for training with frozen encoders (sweep).",
                "dfew_mm embed --config ablation_frozen --store features/dfew --out features/dfew_emb",
                "dfew_mm embed --config tiny --store features/synth --out features/synth_emb")
    _add_experiment_args(p)
    p.add_argument("--out", required=True, help="cache folder (created; resumed if present)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default %(default)s)")


def _run_embed(args) -> int:
    from dfew_mm.embed import build_cache

    _check_numbers(args, batch_size=(1, None))
    out = build_cache(_experiment_config(args), args.out, batch_size=args.batch_size, device=args.device)
    print(f"embedding cache: {out}")
    return 0


def _add_sweep(sub) -> None:
    p = _parser(sub, "sweep", "Train every non-empty modality subset over the chosen folds from an embedding cache; "
                "writes one table.",
                "dfew_mm sweep --config ablation_frozen --cache features/dfew_emb --folds 1-5 --out runs/sweep",
                "dfew_mm sweep --config tiny --cache features/synth_emb --folds 1,2 --out runs/sweep_tiny")
    _add_experiment_args(p)
    p.add_argument("--cache", required=True, help="embedding cache from `dfew_mm embed`")
    p.add_argument("--folds", type=_parse_folds, help="e.g. 1-5 or 1,3 (default: all folds of the dataset)")
    p.add_argument("--out", required=True, help="folder for <modalities>/fold_k/ runs and sweep_summary.{csv,txt}")


def _run_sweep(args) -> int:
    from dfew_mm.cv import sweep
    from dfew_mm.data.embeddings import EmbeddingCache
    from dfew_mm.datasets import get_dataset

    frozen = [f"model.{m}.freeze=all" for m in EmbeddingCache(args.cache).modalities]  # what the cache holds
    cfg = _experiment_config(args, [f"data.embedding_cache={args.cache}", *frozen])
    sweep(cfg, args.folds or get_dataset(cfg.data.dataset).folds, args.out)
    if not _finish_distributed():
        return 0
    print((Path(args.out) / "sweep_summary.txt").read_text(), end="")
    return 0


def _finish_distributed() -> bool:
    """End a torchrun process group if there is one; True on the process that should print."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return True
    main = dist.get_rank() == 0
    dist.destroy_process_group()
    return main


# -- demo ------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    from dfew_mm import demo

    p = _parser(sub, "demo", "End to end on synthetic data: synth -> extract -> train (video, pose, audio, "
                "video+pose+audio) -> evaluate under darkening -> low-light report. About 3 minutes on 2 idle CPU cores.",
                "dfew_mm demo", "dfew_mm demo --out /tmp/demo --assets-dir ../shared/assets/mediapipe --seed 1")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo); reruns resume")
    p.add_argument("--assets-dir", type=Path, help="folder with the MediaPipe model files (or set DFEW_MM_ASSETS)")
    p.add_argument("--clips", type=int, default=demo.DEMO_CLIPS,
                   help=f"synthetic clips, at least {demo.MIN_CLIPS} (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data, split and training (default %(default)s)")
    p.add_argument("--epochs", type=int, help="training epochs (default: configs/tiny.yaml)")
    p.add_argument("--workers", type=int, default=demo.DEMO_WORKERS,
                   help="processes for synthesis and extraction (default %(default)s)")
    p.add_argument("--darken", default=demo.DEMO_DARKEN, help="darkening strengths to evaluate (default %(default)s)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides of the tiny training config")


def _run_demo(args) -> int:
    import time

    import pandas as pd

    from dfew_mm import demo
    from dfew_mm.demo import format_summary, run_demo

    _check_numbers(args, clips=(demo.MIN_CLIPS, None), epochs=(1, None), workers=(1, None))
    tic = time.perf_counter()
    result = run_demo(args.out, args.assets_dir, args.clips, args.epochs, args.workers, args.darken, seed=args.seed,
                      overrides=args.overrides)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"\nseed {args.seed}: " + format_summary(result.summary))
        print("\nUAR (%) by modality subset and crop-level darkening strength:")
        print(result.darkening.to_string())
    print("\nsteps: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
          + f"; total {time.perf_counter() - tic:.0f} s")
    print(f"report:      {result.report}\nnotebook:    {result.notebook}\nsummary:     {result.out / 'summary.csv'}"
          f"\noutputs in:  {result.out}")
    return 0


# -- report --------------------------------------------------------------------------------
def _add_report(sub) -> None:
    p = _parser(sub, "report", "Execute the low-light analysis notebook on a folder of prediction files (HTML + figures).",
                "dfew_mm report preds --store features --out report",
                "dfew_mm report demo/predictions --store demo/features --out /tmp/report")
    p.add_argument("predictions", type=Path, help="folder of prediction CSVs from `dfew_mm evaluate`")
    p.add_argument("--store", type=Path, help="feature store, for the grid of dark face crops")
    p.add_argument("--out", type=Path, required=True, help="folder for the executed notebook, HTML and figures")


def _run_report(args) -> int:
    from dfew_mm.analysis import execute_notebook

    extra = {"store": str(args.store)} if args.store else {}
    notebook, html = execute_notebook(args.predictions, args.out, **extra)
    print(f"report:   {html}\nnotebook: {notebook}")
    return 0


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "folds": (_add_folds, _run_folds),
    "synth": (_add_synth, _run_synth),
    "extract": (_add_extract, _run_extract),
    "evaluate": (_add_evaluate, _run_evaluate),
    "predict": (_add_predict, _run_predict),
    "report": (_add_report, _run_report),
    "demo": (_add_demo, _run_demo),
    "train": (_add_train, _run_train),
    "cv": (_add_cv, _run_cv),
    "embed": (_add_embed, _run_embed),
    "sweep": (_add_sweep, _run_sweep),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfew_mm",
        description="Multimodal (face video, body pose, audio) emotion recognition on DFEW, MAFW and FERV39k.",
        epilog=_examples("dfew_mm demo", "dfew_mm folds --dfew-root /data/DFEW",
                         "dfew_mm <command> --help"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads TQDM_* overrides; bars are off in worker processes too
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command][1](args)
    except DfewMMError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a write the library does not wrap: still one line, not a traceback
        if err.errno not in WRITE_ERRNOS:
            raise
        from dfew_mm.files import write_error

        message = str(write_error(Path(err.filename), err)) if err.filename else f"{err.strerror}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def one_line(message: str) -> str:
    """An error raised in a DataLoader worker comes back wrapped with its traceback: keep its last line."""
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(r"^[A-Za-z_][\w.]*: ", "", last.strip())
    return message


if __name__ == "__main__":
    sys.exit(main())
