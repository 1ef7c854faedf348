"""Fold lists -> the train/validation/test clip ids of one fold that a feature store can serve.

The fold lists come from the dataset named by the config (`data.dataset`, dfew_mm.datasets), read
from its copy (`data.root`, or `data.dfew_root` for DFEW) or its split folder (`data.splits_dir`).

The validation split is carved out of the training fold (stratified, seeded); the test fold is
only used once training is complete. Every clip of the fold is checked before anything starts
(a manifest row with status ok, a clip file of the recorded size whose zip directory reads).
Clips missing from the store, failed in extraction or with unreadable files stop the run with
the list and the repair, unless `allow_missing` is set, in which case they are listed in
`FoldSplits.excluded`. Clips extracted from a dataset's face frames without their original video
hold faces only: `check_originals` stops modalities that read pose or audio before they start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.config import DataConfig
from dfew_mm.data.store import ORIGINAL_ARRAYS, FeatureStore
from dfew_mm.datasets import open_dataset
from dfew_mm.datasets.base import Dataset
from dfew_mm.errors import StoreError

log = logging.getLogger(__name__)


@dataclass
class Split:
    ids: list[str]
    labels: np.ndarray  # (N,) int64


@dataclass
class FoldSplits:
    train: Split
    val: Split
    test: Split
    excluded: pd.DataFrame  # clip_id, split, reason: clips left out with allow_missing


UNREADABLE = "unreadable"  # reason prefix of clips whose file is missing or damaged


def dataset_of(data_cfg: DataConfig) -> Dataset:
    """The dataset of a `data` config section, bound to its copy and split folder."""
    return open_dataset(data_cfg.dataset, data_cfg.root or data_cfg.dfew_root or None, data_cfg.splits_dir or None)


def _usable(store: FeatureStore, ids: Sequence[str]) -> dict[str, str]:
    """clip id -> reason it cannot be used ('' when usable)."""
    manifest = store.manifest.set_index("clip_id")
    reasons = {}
    listed_ok = []
    for clip_id in ids:
        if clip_id not in manifest.index:
            reasons[clip_id] = "not extracted"
        elif manifest.at[clip_id, "status"] != "ok":
            reasons[clip_id] = f"extraction {manifest.at[clip_id, 'status']}: {manifest.at[clip_id, 'error']}"
        else:
            listed_ok.append(clip_id)
    for clip_id, problem in store.clip_problems(listed_ok).items():
        reasons[clip_id] = f"{UNREADABLE}: {problem}" if problem else ""
    return reasons


def stratified_val_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (N,) of validation members: systematic stratified sampling.

    Each clip gets its rank within its (shuffled) class as a quantile; the clips with the smallest
    quantiles go to validation, so every class contributes in proportion. Classes with a single
    clip stay in training.
    """
    rng = np.random.default_rng(seed)
    quantile = np.full(len(labels), np.inf)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        order = rng.permutation(members)
        quantile[order] = (np.arange(len(order)) + rng.random(len(order))) / len(order)
    n_val = max(1, int(round(len(labels) * fraction))) if np.isfinite(quantile).any() else 0
    chosen = np.argsort(quantile, kind="stable")[:n_val]
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen[np.isfinite(quantile[chosen])]] = True
    return mask


def fold_splits(store: FeatureStore, data_cfg: DataConfig, seed: int,
                parts: Sequence[str] = ("train", "test")) -> FoldSplits:
    """Train/val/test clip ids of `data_cfg.fold` that are present in the store.

    Only the split files in `parts` are checked against the store; with `parts=("test",)` (evaluating
    the test split, e.g. on a store that holds only the test clips) train and val come back empty.
    """
    fold = dataset_of(data_cfg).fold(data_cfg.fold)
    excluded, kept, stops = [], {}, []
    for name, frame in (("train", fold.train), ("test", fold.test)):
        if name not in parts:
            kept[name] = Split([], np.zeros(0, dtype=np.int64))
            continue
        ids = [str(i) for i in frame.index]
        reasons = _usable(store, ids)
        bad = [i for i in ids if reasons[i]]
        absent = [i for i in bad if not reasons[i].startswith(UNREADABLE)]
        if absent:
            first = ", ".join(f"{i} ({reasons[i]})" for i in absent[:5])
            stops.append(f"{len(absent)} of {len(ids)} {name} clips of fold {fold.k} are not usable in feature store "
                         f"{store.path}: {first}{' ...' if len(absent) > 5 else ''}")
        excluded += [{"clip_id": i, "split": name, "reason": reasons[i]} for i in bad]
        good = frame.loc[[i for i in ids if not reasons[i]], "label"].to_numpy(dtype=np.int64)
        kept[name] = Split([i for i in ids if not reasons[i]], good)
    unreadable = {e["clip_id"]: e["reason"][len(UNREADABLE) + 2:] for e in excluded
                  if e["reason"].startswith(UNREADABLE)}
    if (stops or unreadable) and not data_cfg.allow_missing:
        if unreadable:
            error = store.unreadable_error(unreadable, f"fold {fold.k}")
            raise StoreError("; ".join(stops + [str(error)]) if stops else str(error))
        raise StoreError("; ".join(stops) + ". Extract them, or pass --allow-missing (data.allow_missing=true) to "
                         "leave them out and record the list.")
    if excluded:
        log.warning("fold %d: leaving out %d clips missing from, failed in or unreadable in %s (first: %s)", fold.k,
                    len(excluded), store.path, ", ".join(e["clip_id"] for e in excluded[:5]))
    empty = [name for name in parts if not kept[name].ids]
    if empty:
        raise StoreError(f"fold {fold.k}: no usable {' or '.join(empty)} clips in feature store {store.path}")
    train = kept["train"]
    if "train" not in parts:
        return FoldSplits(train, train, kept["test"], pd.DataFrame(excluded, columns=["clip_id", "split", "reason"]))
    is_val = stratified_val_split(train.labels, data_cfg.val_fraction, seed)
    if not is_val.any():
        raise StoreError(f"fold {fold.k}: too few training clips ({len(train.ids)}) to carve a validation split")
    pick = lambda mask: Split([i for i, m in zip(train.ids, mask) if m], train.labels[mask])  # noqa: E731
    return FoldSplits(pick(~is_val), pick(is_val), kept["test"],
                      pd.DataFrame(excluded, columns=["clip_id", "split", "reason"]))


def without_original(store: FeatureStore, ids: Sequence[str]) -> list[str]:
    """The clips among `ids` extracted from a dataset's face frames without an original video (manifest
    `has_original` false): their ORIGINAL_ARRAYS are empty. Stores from before the column: none."""
    manifest = store.manifest
    if "has_original" not in manifest:
        return []
    flags = manifest.set_index("clip_id")["has_original"]
    lacking = {str(i) for i, flag in flags.items() if str(flag).strip().lower() in ("false", "0")}
    return [i for i in ids if i in lacking]


def check_originals(store: FeatureStore, ids: Sequence[str], model_cfg, modalities: Sequence[str],
                    context: str, dataset: Dataset) -> None:
    """StoreError (one line) when `modalities` read arrays only an original video gives (pose, audio) and
    clips among `ids` of `dataset` have none: names those clips, the modalities and the ways on."""
    from dfew_mm.models.encoders import ENCODERS

    needs = [m for m in modalities if set(ENCODERS[m].store_arrays(getattr(model_cfg, m))) & set(ORIGINAL_ARRAYS)]
    lacking = without_original(store, ids) if needs else []
    if not lacking:
        return
    source = (store.settings() or {}).get("face_source", "SOURCE")
    rest = [m for m in modalities if m not in needs]
    instead = f", or leave out {', '.join(needs)} (e.g. --modalities {','.join(rest)})" if rest else (
        ", or train a modality that needs no original (e.g. --modalities video)")
    fix = (f"put their originals in ROOT/{dataset.clip_dir}/<id>.mp4 and re-extract them (`dfew_mm extract --dataset "
           f"{dataset.name} --root ROOT --face-source {source} --out {store.path} --overwrite`){instead}"
           if dataset.clip_dir else f"{dataset.title} distributes face frames only, no original clips: leave out "
           f"{', '.join(needs)} (e.g. --modalities {','.join(rest) or 'video'})")
    raise StoreError(
        f"{context}: {', '.join(needs)} need{'s' if len(needs) == 1 else ''} the clips' original videos, and "
        f"{len(lacking)} of {len(ids)} clips have none in feature store {store.path} (e.g. {', '.join(lacking[:5])}"
        f"{' ...' if len(lacking) > 5 else ''}): {fix}")
