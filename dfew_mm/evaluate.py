"""Evaluation of a trained checkpoint on a DFEW fold: predictions file, metrics, low-light perturbation.

The predictions file and its metrics JSON are described in dfew_mm.predictions.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.errors import ConfigError
from dfew_mm.metrics import classification_metrics, format_metrics, json_safe
from dfew_mm.constants import MODALITIES
from dfew_mm.predictions import (PREDICTION_COLUMNS, PROB_COLUMNS, QUALITY_COLUMNS, RELIANCE_COLUMNS,  # noqa: F401
                                 metrics_path_for, modality_label, perturbation_label, prediction_frame, run_name)
from dfew_mm.stats import LEVEL, METHOD, N_BOOT, metric_intervals

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")

# -- low-light perturbation ----------------------------------------------------------------------
# At strength 1 the perturbation roughly matches a dim indoor scene shot without extra light:
# 10% exposure, shadows crushed by a gamma of 1.5, and 6-7 grey levels of sensor noise on a lit
# skin tone (shot noise grows with the signal, read noise does not), close to the low-light clips
# of the synthetic data set.
MIN_GAIN = 0.10  # exposure gain at strength 1
MAX_GAMMA = 1.5  # tone-curve exponent at strength 1 (> 1 darkens the mid-tones)
SHOT_LEVELS_PER_ELECTRON = 2.0  # at strength 1: grey levels per photo-electron (shot-noise scale)
READ_NOISE_LEVELS = 4.0  # at strength 1: read-noise std in grey levels


def darken(faces: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Simulate low light on uint8 face crops (T, S, S, 3): gain and gamma, then sensor noise.

    `strength` 0 returns the frames unchanged; 1 is a very dark, noisy capture. Shot noise is
    Poisson in the number of photo-electrons (variance proportional to the signal), read noise is
    Gaussian; both scale with the strength, because in a darker scene the camera amplifies the
    sensor signal more, so each grey level stands for fewer photo-electrons.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"darkening strength {strength} must be between 0 and 1")
    if faces.dtype != np.uint8:
        raise TypeError(f"faces must be uint8, got {faces.dtype}")
    if strength == 0.0:
        return faces.copy()
    gain = 1.0 - strength * (1.0 - MIN_GAIN)
    gamma = 1.0 + strength * (MAX_GAMMA - 1.0)
    levels = 255.0 * gain * (faces.astype(np.float32) / 255.0) ** gamma  # (T, S, S, 3) noise-free
    per_electron = strength * SHOT_LEVELS_PER_ELECTRON
    electrons = rng.poisson(levels / per_electron)
    noisy = electrons * per_electron + rng.normal(0.0, strength * READ_NOISE_LEVELS, faces.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Darken:
    """`darken` at a fixed strength, in the dataset's `face_transform(faces, rng)` form (picklable)."""

    strength: float

    def __call__(self, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return darken(faces, self.strength, rng)

    @property
    def label(self) -> str:
        return perturbation_label(self.strength)


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
    """Metrics of each (run, modalities, perturbation) pass in a predictions frame, with bootstrap
    intervals `uar_ci` and `war_ci` ([low, high]; `dfew_mm.stats`, settings in `interval_settings`)."""
    passes = []
    for (run, mods, pert), group in frame.groupby(["run", "modalities", "perturbation"], sort=False):
        y_true, y_pred = group["label"].to_numpy(), group["pred"].to_numpy()
        metrics = classification_metrics(y_true, y_pred)
        ci = metric_intervals(y_true, y_pred, n_boot=n_boot, level=level, seed=seed)
        passes.append({"run": run, "modalities": mods, "perturbation": pert,
                       "darken": float(group["darken"].iloc[0]), **metrics,
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


def select_clips(store, data_cfg, split: str, seed: int) -> pd.DataFrame:
    """The fold's `split` clips usable in the store, as a frame with str clip_id and label.

    Uses the training code's fold logic, so `val` is the same stratified share of the training
    fold that training validated on (same seed), and missing clips are handled the same way.
    """
    from dfew_mm.data.splits import fold_splits

    part = getattr(fold_splits(store, data_cfg, seed), split)
    return pd.DataFrame({"clip_id": part.ids, "label": part.labels})


def predict_store_clips(model, cfg, store, clips: pd.DataFrame, modalities: Sequence[str], device,
                        face_transform=None, batch_size: int | None = None, num_workers: int = 0,
                        seed: int = 0, desc: str = "evaluate") -> np.ndarray:
    """Class probabilities (N, 7) for the store clips in `clips` (columns clip_id, label)."""
    from torch.utils.data import DataLoader

    from dfew_mm.batch import collate
    from dfew_mm.data.dataset import ClipDataset
    from dfew_mm.inference import predict_logits

    dataset = ClipDataset(store, clips["clip_id"].tolist(), clips["label"].to_numpy(), cfg.data,
                          modalities=list(modalities), train=False, face_transform=face_transform, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    return predict_logits(model, loader, device, cfg.train.amp, modalities, progress=True, desc=desc).probs


def reliance(probs: np.ndarray, without: np.ndarray) -> np.ndarray:
    """(N,) p(pred | all) - p(pred | one modality masked), pred = argmax of `probs` (N, 7)."""
    rows, pred = np.arange(len(probs)), probs.argmax(axis=1)
    return probs[rows, pred] - without[rows, pred]


def evaluate(checkpoint: str | Path, store: str | Path, fold: int | None = None, split: str = "test",
             modalities: str | Sequence[str] | None = None, darken: str | Sequence[float] | None = None,
             out_csv: str | Path = "predictions.csv", dfew_root: str | Path | None = None,
             splits_dir: str | Path | None = None, allow_missing: bool = False,
             batch_size: int | None = None, num_workers: int | None = None, seed: int = 0,
             device: str = "auto", attribution: bool = False) -> dict:
    """Evaluate a checkpoint on one fold split, once per darkening strength.

    Writes `out_csv` (one row per clip and pass, PREDICTION_COLUMNS) and the metrics JSON beside
    it; returns that JSON's content. The fold lists come from the run's config (data.dfew_root /
    data.splits_dir) unless `dfew_root` / `splits_dir` are given. `device` "auto" uses CUDA when
    available; `num_workers` defaults to the run's data.num_workers. With `attribution`, each pass
    is repeated with each evaluated modality masked out and the file gets RELIANCE_COLUMNS
    (dfew_mm.predictions): how much the prediction leaned on each modality, clip by clip.
    """
    from dfew_mm.checkpoint import load_checkpoint
    from dfew_mm.data.store import FeatureStore
    from dfew_mm.device import resolve_device

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
    data_cfg = replace(cfg.data, fold=fold or cfg.data.fold, store=str(store),
                       dfew_root=str(dfew_root) if dfew_root else cfg.data.dfew_root,
                       splits_dir=str(splits_dir) if splits_dir else cfg.data.splits_dir,
                       allow_missing=allow_missing or cfg.data.allow_missing)
    fold = data_cfg.fold
    if fold != cfg.data.fold:
        log.warning("the checkpoint was trained on fold %d: clips of fold %d's %s split were in its training "
                    "data, so these numbers are not held out", cfg.data.fold, fold, split)
    cfg = replace(cfg, data=data_cfg)
    feature_store = FeatureStore(store)
    clips = select_clips(feature_store, data_cfg, split, cfg.train.seed)
    log.info("evaluating %s on fold %d %s (%d clips), modalities %s, darkening %s", checkpoint, fold,
             split, len(clips), modality_label(mods), strengths)

    frames = []
    for strength in strengths:
        transform = Darken(strength) if strength > 0 else None
        probs = predict_store_clips(model, cfg, feature_store, clips, mods, device, transform, batch_size,
                                    num_workers, seed, desc=perturbation_label(strength))
        leaned = {}
        if attribution:  # same clips, same darkened frames (seeded per clip), one modality masked at a time
            for m in MODALITIES:
                rest = [x for x in mods if x != m]
                leaned[f"reliance_{m}"] = np.nan if m not in mods else reliance(probs, predict_store_clips(
                    model, cfg, feature_store, clips, rest, device, transform, batch_size, num_workers, seed,
                    desc=f"{perturbation_label(strength)} without {m}"))
        frames.append(prediction_frame(clips["clip_id"], clips["label"].to_numpy(), probs,
                                       feature_store.manifest, modalities=modality_label(mods),
                                       perturbation=perturbation_label(strength), darken=strength,
                                       run=run_name(checkpoint),
                                       trained_modalities=modality_label(cfg.model.modalities),
                                       fold=fold, split=split, **leaned))
    predictions = pd.concat(frames, ignore_index=True)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out_csv, index=False)

    passes = metrics_by_pass(predictions)
    for p in passes:
        log.info("%s %s: %s", p["modalities"], p["perturbation"], format_metrics(p))
    result = {"checkpoint": str(checkpoint), "store": str(Path(store).resolve()), "fold": fold, "split": split,
              "modalities": modality_label(mods), "darken": strengths, "predictions": out_csv.name,
              "epoch": meta.get("epoch"), "attribution": attribution, "intervals": interval_settings(),
              "passes": passes}
    metrics_path_for(out_csv).write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result
