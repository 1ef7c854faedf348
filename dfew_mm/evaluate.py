"""Evaluation of a trained checkpoint on a fold of its dataset: predictions file, metrics, low-light perturbation.

The predictions file and its metrics JSON are described in dfew_mm.predictions. Low light comes two
ways (dfew_mm.lowlight): `darken` strengths darken the stored face crops at evaluation time (crop
level, a fast approximation), and a store extracted with `--darken S` holds clips whose frames were
darkened before detection (scene level); its passes are labelled `scene:S`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.files import atomic_write_text  # a failed write leaves the previous file whole
from dfew_mm.lowlight import Darken, darken  # noqa: F401  (the low-light model; also imported from here)
from dfew_mm.metrics import classification_metrics, format_metrics, json_safe
from dfew_mm.predictions import (PREDICTION_COLUMNS, PROB_COLUMNS, QUALITY_COLUMNS, RELIANCE_COLUMNS,  # noqa: F401
                                 classes_of, metrics_path_for, modality_label, perturbation_kind, perturbation_label,
                                 prediction_frame, run_name)
from dfew_mm.stats import LEVEL, METHOD, N_BOOT, metric_intervals

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")

def parse_darken(spec: str | float | Sequence[float] | None) -> list[float]:
    """'0.5' -> [0.5]; '0,0.25,0.5' -> three passes; '0:1:0.25' -> 0, 0.25, .., 1; None -> [0]."""
    if spec is None:
        return [0.0]
    if isinstance(spec, (int, float)):
        values = [float(spec)]
    elif isinstance(spec, str):
        values = _parse_darken_text(spec)
    else:
        values = [float(v) for v in spec]
    bad = [v for v in values if not (0.0 <= v <= 1.0) or math.isnan(v)]
    if not values or bad:
        raise ConfigError(f"--darken '{spec}': strengths must lie in 0..1 (got {bad or 'nothing'})")
    return sorted(set(values))


def _parse_darken_text(spec: str) -> list[float]:
    text = spec.strip().lower()
    if text in ("", "none", "off"):
        return [0.0]
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 6) for i in range(count)]
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--darken '{spec}' should look like 0.5, 0,0.25,0.5 or 0:1:0.25") from None


def parse_modalities(spec: str | Sequence[str] | None, trained: Sequence[str]) -> list[str]:
    """'video+pose' or 'video,pose' -> ['video', 'pose'], checked against the trained modalities."""
    if spec is None or spec == "" or spec == "all":
        return list(trained)
    from dfew_mm.models.encoders import resolve_modalities

    names = resolve_modalities(spec.replace("+", ",") if isinstance(spec, str) else spec)  # canonical order
    untrained = [n for n in names if n not in trained]
    if untrained:
        raise ConfigError(f"the checkpoint was trained with {'+'.join(trained)}; it cannot use {untrained}")
    return names


# -- evaluation --------------------------------------------------------------------------------
def metrics_by_pass(frame: pd.DataFrame, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> list[dict]:
    """Metrics of each (run, modalities, perturbation) pass in a predictions frame (classes from its
    probability columns), with bootstrap intervals `uar_ci` and `war_ci` ([low, high]; `dfew_mm.stats`,
    settings in `interval_settings`)."""
    passes = []
    classes = classes_of(frame) or None  # a frame without probability columns: the default dataset's
    for (run, mods, pert), group in frame.groupby(["run", "modalities", "perturbation"], sort=False):
        y_true, y_pred = group["label"].to_numpy(), group["pred"].to_numpy()
        metrics = classification_metrics(y_true, y_pred, classes)
        ci = metric_intervals(y_true, y_pred, n_boot=n_boot, level=level, seed=seed)
        passes.append({"run": run, "modalities": mods, "perturbation": pert,
                       "darken": float(group["darken"].iloc[0]), "darken_kind": perturbation_kind(pert), **metrics,
                       "uar_ci": [ci["uar"]["low"], ci["uar"]["high"]],
                       "war_ci": [ci["war"]["low"], ci["war"]["high"]]})
        reliance = {c.removeprefix("reliance_"): float(group[c].mean()) for c in RELIANCE_COLUMNS
                    if c in group and group[c].notna().any()}
        if reliance:
            passes[-1]["mean_reliance"] = reliance
    return passes


def interval_settings(n_boot: int = N_BOOT, level: float = LEVEL) -> dict:
    """How the `uar_ci`/`war_ci` of a metrics JSON were computed (written once per file)."""
    return {"method": METHOD, "n_boot": n_boot, "level": level, "resampled": "clips, within each true class"}


def select_clips(store, data_cfg, split: str, seed: int, excluded_csv: Path | None = None) -> pd.DataFrame:
    """The fold's `split` clips usable in the store, as a frame with str clip_id and label.

    Uses the training code's fold logic, so `val` is the same stratified share of the training
    fold that training validated on (same seed), and missing or unreadable clips are handled the
    same way; with `data_cfg.allow_missing` the clips left out are written to `excluded_csv`. For
    the test split only the test clips must be in the store (a darkened store may hold just those).
    """
    from dfew_mm.data.splits import fold_splits

    splits = fold_splits(store, data_cfg, seed, parts=("test",) if split == "test" else ("train", "test"))
    if excluded_csv is not None and len(splits.excluded):
        atomic_write_text(excluded_csv, splits.excluded.to_csv(index=False))
        log.warning("%d clips of fold %d left out (listed in %s)", len(splits.excluded), data_cfg.fold, excluded_csv)
    elif excluded_csv is not None:
        Path(excluded_csv).unlink(missing_ok=True)  # from an earlier evaluation into the same file
    part = getattr(splits, split)
    return pd.DataFrame({"clip_id": part.ids, "label": part.labels})


def excluded_path_for(out_csv: str | Path) -> Path:
    """preds/f1.csv -> preds/f1.excluded_clips.csv (not a predictions file: it has no metrics JSON)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.excluded_clips.csv")


# -- does the store serve the model? ---------------------------------------------------------------
# Settings that may differ between the training store and an evaluated store: the darkening is what
# a darkened store is for; everything else changes what the model sees besides the light.
DARKENING_SETTINGS = ("darken", "darken_seed")
# Not settings of the features: the store format is checked by array, the extractor version warned about.
VERSION_SETTINGS = ("store_format", "extractor_version")
EXTRACT_FLAGS = {"frames": "--frames", "face_size": "--face-size", "face_model": "--face-model",
                 "pose_model": "--pose-model", "face_source": "--face-source"}


def store_gaps(cfg, store, clip_id: str, modalities: Sequence[str]) -> tuple[list[str], list[str]]:
    """(what the store lacks for the model, extraction flags that fix it), from one clip's array headers
    and the extraction settings of this store and of the store the model was trained on."""
    from dfew_mm.data.store import FeatureStore
    from dfew_mm.extract.options import ABSENT_SETTINGS
    from dfew_mm.models.encoders import ENCODERS
    from dfew_mm.models.encoders.base import extract_flag

    shapes = store.array_shapes(clip_id)
    problems: list[str] = []
    flags: dict[str, str] = {}
    wanted = list(dict.fromkeys(a for m in modalities for a in ENCODERS[m].store_arrays(getattr(cfg.model, m))))
    # extraction switches that write a modality's own arrays (e.g. blendshapes): array name -> switch; arrays
    # that default modalities read too (face_mask) come with every extraction
    always = {a for name, cls in ENCODERS.items() if not cls.extract_option
              for a in cls.store_arrays(getattr(cfg.model, name))}
    switch_of = {a: cls.extract_option for name, cls in ENCODERS.items() if cls.extract_option
                 for a in cls.store_arrays(getattr(cfg.model, name)) if a not in always}
    reference = None
    trained_on = Path(cfg.data.store) if cfg.data.store else None
    if trained_on is not None and trained_on.is_dir() and trained_on.resolve() != store.path.resolve():
        reference = FeatureStore(trained_on)
        reference_ids = reference.ok_ids()
        if reference_ids:  # arrays the training store has (e.g. blendshapes) are arrays the model may read
            wanted += [n for n in reference.array_shapes(reference_ids[0]) if n not in wanted]
    missing = [n for n in wanted if n not in shapes]
    if missing:
        problems.append(f"no {', '.join(missing)} array{'s' if len(missing) > 1 else ''} in its clip files")
        flags.update({switch_of[a]: extract_flag(switch_of[a]) for a in missing if a in switch_of})
    size = cfg.data.face_size
    if "faces" in wanted and "faces" in shapes and tuple(shapes["faces"][1:3]) != (size, size):
        problems.append(f"faces of {shapes['faces'][1]} px where the model reads {size} px (data.face_size)")
        flags["face_size"] = f"--face-size {size}"
    ours = store.settings()
    theirs = reference.settings() if reference is not None else None
    if ours is not None and theirs is not None:
        ours, theirs = {**ABSENT_SETTINGS, **ours}, {**ABSENT_SETTINGS, **theirs}
        for key in sorted(set(ours) | set(theirs)):
            if key in DARKENING_SETTINGS or key in VERSION_SETTINGS or ours.get(key) == theirs.get(key):
                continue
            switch = key in switch_of.values()
            if switch and not theirs.get(key):
                continue  # arrays this store has and the training store had not are never read
            problems.append(f"{key} {ours.get(key)!r} where the training store {trained_on} has {theirs.get(key)!r}")
            value = theirs.get(key)
            flags[key] = (f"{EXTRACT_FLAGS[key]} {value}" if key in EXTRACT_FLAGS
                          else extract_flag(key) if switch else f"{key}={value!r}")
    elif ours is not None and "frames" in ours and ours["frames"] != cfg.data.frames:
        log.warning("%s holds %s frames per clip and the model reads %d (data.frames); the training store's "
                    "settings are not available to check that it saw the same", store.path, ours["frames"],
                    cfg.data.frames)
    return problems, list(flags.values())


def check_store_serves(cfg, store, clip_id: str, modalities: Sequence[str], checkpoint: str | Path) -> None:
    """StoreError (one line) naming what the store lacks for the model and how to re-extract it."""
    problems, flags = store_gaps(cfg, store, clip_id, modalities)
    if not problems:
        return
    scene = store.scene_darken()
    command = ["python preprocess/extract.py --dfew-root ROOT --out NEW_STORE", *flags,
               *([f"--darken {scene:g}"] if scene else []), "[--split test --fold K]"]
    raise StoreError(f"feature store {store.path} does not serve the model of {checkpoint}: {'; '.join(problems)}. "
                     f"Re-extract it with the settings of the training store: `{' '.join(command)}`")


def trained_extractor_version(meta: dict, trained_store: str | None) -> int | None:
    """The extractor version of a model's training store: from its checkpoint, or from the training store's
    settings for checkpoints saved before they recorded it; None when neither says."""
    from dfew_mm.data.store import FeatureStore

    version = meta.get("extractor_version")
    if version is None and trained_store and Path(trained_store).is_dir():
        version = FeatureStore(trained_store).extractor_version()
    return version


def warn_extractor_versions(meta: dict, trained_store: str | None, store) -> None:
    """Warn when the evaluated store comes from another extractor version than the training store."""
    trained = trained_extractor_version(meta, trained_store)
    ours = store.extractor_version()
    if None not in (trained, ours) and trained != ours:
        log.warning("%s comes from extractor version %d and the model's training store from version %d: the same "
                    "clips give other features; re-extract the older store for exactly comparable results "
                    "(docs/reproducibility.md)", store.path, ours, trained)


def predict_store_clips(model, cfg, store, clips: pd.DataFrame, modalities: Sequence[str], device,
                        transforms=None, batch_size: int | None = None, num_workers: int = 0,
                        seed: int = 0, desc: str = "evaluate") -> np.ndarray:
    """Class probabilities (N, C) for the store clips in `clips` (columns clip_id, label); `transforms`
    change stored arrays by name first (ClipDataset)."""
    from torch.utils.data import DataLoader

    from dfew_mm.batch import collate
    from dfew_mm.data.dataset import ClipDataset
    from dfew_mm.inference import predict_logits

    dataset = ClipDataset(store, clips["clip_id"].tolist(), clips["label"].to_numpy(), cfg.data,
                          modalities=list(modalities), train=False, transforms=transforms, seed=seed,
                          model_cfg=cfg.model)
    loader = DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    return predict_logits(model, loader, device, cfg.train.amp, modalities, progress=True, desc=desc).probs


def reliance(probs: np.ndarray, without: np.ndarray) -> np.ndarray:
    """(N,) p(pred | all) - p(pred | one modality masked), pred = argmax of `probs` (N, C)."""
    rows, pred = np.arange(len(probs)), probs.argmax(axis=1)
    return probs[rows, pred] - without[rows, pred]


def evaluate(checkpoint: str | Path, store: str | Path, fold: int | None = None, split: str = "test",
             modalities: str | Sequence[str] | None = None, darken: str | Sequence[float] | None = None,
             out_csv: str | Path = "predictions.csv", dfew_root: str | Path | None = None,
             splits_dir: str | Path | None = None, allow_missing: bool = False,
             batch_size: int | None = None, num_workers: int | None = None, seed: int = 0,
             device: str = "auto", attribution: bool = False, root: str | Path | None = None,
             dataset: str | None = None) -> dict:
    """Evaluate a checkpoint on one fold split of the dataset it was trained on, once per darkening strength.

    Writes `out_csv` (one row per clip and pass, the columns of `prediction_columns` for the checkpoint's
    classes) and the metrics JSON beside it; returns that JSON's content. The fold lists come from the
    run's config (data.dataset, data.root / data.dfew_root, data.splits_dir) unless `dataset`, `root`
    (`dfew_root` for DFEW) / `splits_dir` are given. `device` "auto" uses CUDA when
    available; `num_workers` defaults to the run's data.num_workers. With `attribution`, each pass
    is repeated with each evaluated modality masked out and the file gets RELIANCE_COLUMNS
    (dfew_mm.predictions): how much the prediction leaned on each modality, clip by clip.
    """
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.data.splits import check_originals, dataset_of
    from dfew_mm.data.store import FeatureStore
    from dfew_mm.device import resolve_device
    from dfew_mm.models.encoders import ENCODERS

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    model, cfg, meta = load_checkpoint(checkpoint, map_location="cpu")
    mods = parse_modalities(modalities, cfg.model.modalities)
    if attribution and len(mods) < 2:
        raise ConfigError(f"--attribution masks out one modality at a time and needs at least two; this "
                          f"evaluation uses only {modality_label(mods)} (trained with "
                          f"{modality_label(cfg.model.modalities)})")
    strengths = parse_darken(darken)
    device = resolve_device(device)
    model.to(device)
    num_workers = cfg.data.num_workers if num_workers is None else num_workers
    other = dataset is not None and dataset != cfg.data.dataset  # then the run's copy is not this dataset's
    data_cfg = replace(cfg.data, fold=fold or cfg.data.fold, store=str(store), dataset=dataset or cfg.data.dataset,
                       dfew_root=str(dfew_root) if dfew_root else "" if root or other else cfg.data.dfew_root,
                       root=str(root) if root else "" if dfew_root or other else cfg.data.root,
                       splits_dir=str(splits_dir) if splits_dir else cfg.data.splits_dir,
                       allow_missing=allow_missing or cfg.data.allow_missing)
    fold = data_cfg.fold
    fold_lists = dataset_of(data_cfg)
    fold_lists.check_fold(fold)
    if fold_lists.classes != model.classes:
        raise ConfigError(f"{checkpoint} predicts the classes {', '.join(model.classes)}; {fold_lists.title} has "
                          f"{', '.join(fold_lists.classes)}")
    if fold != cfg.data.fold:
        log.warning("the checkpoint was trained on fold %d: clips of fold %d's %s split were in its training "
                    "data, so these numbers are not held out", cfg.data.fold, fold, split)
    feature_store = FeatureStore(store)
    scene = feature_store.scene_darken()
    if scene > 0 and any(strengths):
        raise ConfigError(
            f"feature store {store} was darkened at extraction (scene level, --darken {scene:g} in "
            f"extract_settings.json); --darken {','.join(f'{v:g}' for v in strengths)} would darken its faces a "
            "second time. Evaluate it without --darken, or use --darken on the undarkened store")
    trained_store = cfg.data.store
    cfg = replace(cfg, data=data_cfg)
    clips = select_clips(feature_store, data_cfg, split, cfg.train.seed, excluded_csv=excluded_path_for(out_csv))
    check_store_serves(replace(cfg, data=replace(data_cfg, store=trained_store)), feature_store,
                     str(clips["clip_id"].iloc[0]), mods, checkpoint)
    warn_extractor_versions(meta, trained_store, feature_store)
    check_originals(feature_store, clips["clip_id"].tolist(), cfg.model, mods, f"fold {fold} {split}", fold_lists)
    kind = "scene" if scene > 0 else "crop"
    log.info("evaluating %s on fold %d %s (%d clips), modalities %s, %s", checkpoint, fold, split, len(clips),
             modality_label(mods), f"scene-level darkening {scene:g} (store)" if scene else f"darkening {strengths}")

    frames = []
    for strength in strengths:
        transform = {"faces": Darken(strength)} if strength > 0 else None  # the stored face crops
        label = perturbation_label(scene or strength, kind)
        probs = predict_store_clips(model, cfg, feature_store, clips, mods, device, transform, batch_size,
                                    num_workers, seed, desc=label)
        leaned = {}
        if attribution:  # same clips, same darkened frames (seeded per clip), one modality masked at a time
            for m in ENCODERS:
                rest = [x for x in mods if x != m]
                leaned[f"reliance_{m}"] = np.nan if m not in mods else reliance(probs, predict_store_clips(
                    model, cfg, feature_store, clips, rest, device, transform, batch_size, num_workers, seed,
                    desc=f"{label} without {m}"))
        frames.append(prediction_frame(clips["clip_id"], clips["label"].to_numpy(), probs,
                                       feature_store.manifest, model.classes, modalities=modality_label(mods),
                                       perturbation=label, darken=scene or strength,
                                       darken_kind="none" if label == "none" else kind,
                                       run=run_name(checkpoint),
                                       trained_modalities=modality_label(cfg.model.modalities),
                                       fold=fold, split=split, **leaned))
    predictions = pd.concat(frames, ignore_index=True)
    out_csv = Path(out_csv)
    atomic_write_text(out_csv, predictions.to_csv(index=False))

    passes = metrics_by_pass(predictions)
    for p in passes:
        log.info("%s %s: %s", p["modalities"], p["perturbation"], format_metrics(p))
    result = {"checkpoint": str(checkpoint), "store": str(Path(store).resolve()), "dataset": fold_lists.name,
              "classes": list(model.classes), "fold": fold, "split": split,
              "modalities": modality_label(mods), "darken": strengths, "scene_darken": scene,
              "predictions": out_csv.name, "epoch": meta.get("epoch"), "attribution": attribution,
              "intervals": interval_settings(), "passes": passes}
    atomic_write_text(metrics_path_for(out_csv), json.dumps(json_safe(result), indent=2) + "\n")
    return result
