"""`dfew_mm embed`: run the encoders of the cacheable modalities once over a store and cache their tokens.

The cache layout and its reader are in dfew_mm.data.embeddings; training reads the cache instead
of those modalities' store arrays when `data.embedding_cache` is set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from dfew_mm.batch import collate
from dfew_mm.config import ExperimentConfig
from dfew_mm.data.dataset import ClipDataset
from dfew_mm.data.embeddings import EmbeddingCache, cache_meta, cacheable_modalities
from dfew_mm.data.store import FeatureStore, check_zip_file
from dfew_mm.datasets import get_dataset
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.files import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from dfew_mm.device import resolve_device
from dfew_mm.inference import run_inference
from dfew_mm.models import build_model, load_pretrained
from dfew_mm.models.encoders import ENCODERS

log = logging.getLogger(__name__)


def build_cache(cfg: ExperimentConfig, out: str | Path, batch_size: int = 16, device: str = "auto",
                progress: bool = True) -> Path:
    """Embed every usable clip of `cfg.data.store` with the encoders of the config's cacheable modalities
    (training from the cache then needs them frozen, `freeze: all`).

    Resumable: clips already in the cache are skipped. The encoders are built and loaded
    (pretrained weights as configured) once; their weights are saved with the cache.
    """
    if not cfg.data.store:
        raise ConfigError("no feature store given: pass --store FEATURES (data.store=FEATURES)")
    out = Path(out)
    modalities = cacheable_modalities(cfg)
    if not modalities:
        cacheable = ", ".join(m for m, cls in ENCODERS.items() if cls.cacheable)
        raise ConfigError(f"nothing to embed: the cache holds {cacheable}; the other modalities are read from "
                          "the store")
    meta = cache_meta(cfg, modalities)
    if (out / "meta.json").is_file():
        cache = EmbeddingCache(out)
        if cache.meta != meta:
            raise ConfigError(f"{out} holds embeddings made with other settings; choose another --out")
    store = FeatureStore(cfg.data.store)
    usable = usable_store_clips(store, out, cfg.data.allow_missing)  # before any model is built
    model_cfg = dataclasses.replace(cfg.model, modalities=modalities)
    model = build_model(model_cfg, get_dataset(cfg.data.dataset).classes)  # only its encoders run here
    dev = resolve_device(device)
    encoders_path = out / "encoders.pt"
    if encoders_path.is_file():
        try:
            saved = torch.load(encoders_path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or damaged: the cached clips cannot be matched any more
            raise StoreError(f"{encoders_path} cannot be read ({err}); the cache in {out} cannot be extended: "
                             "embed into a new --out") from None
        for m, state in saved.items():
            model.encoders[m].load_state_dict(state, strict=True)
    else:
        load_pretrained(model)  # pretrained weights as configured
        state = {m: model.encoders[m].state_dict() for m in modalities}
        atomic_write_bytes(encoders_path, lambda f: torch.save(state, f))
    atomic_write_bytes(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    model.to(dev).eval()

    remove_stale_temp_files([out, out / "clips"])
    todo = [i for i in usable if check_zip_file(out / "clips" / f"{i}.npz")]  # missing or damaged
    log.info("embedding %d clips (%d already cached) with %s on %s", len(todo), len(usable) - len(todo),
             ",".join(modalities), dev)
    dataset = ClipDataset(store, todo, np.zeros(len(todo), np.int64), cfg.data, modalities, train=False,
                          model_cfg=cfg.model)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)

    def encode(batch) -> dict[str, torch.Tensor]:
        outputs = {}
        for m in modalities:
            features, mask, times = model.encoders[m].tokens(batch)  # (B, L, D), (B, L), (B, L)
            outputs.update({m: features.float(), f"{m}_mask": mask, f"{m}_time": times.float()})
        return outputs

    for batch, outputs in run_inference(encode, loader, dev, cfg.train.amp, progress, desc="embed"):
        arrays = {k: v.cpu().numpy() for k, v in outputs.items()}
        for b, clip_id in enumerate(batch["clip_id"]):
            clip = {k: v[b].astype(np.float16) if k in modalities else v[b] for k, v in arrays.items()}
            atomic_write_bytes(out / "clips" / f"{clip_id}.npz", lambda f: np.savez(f, **clip))
    return out


def usable_store_clips(store: FeatureStore, out: Path, allow_missing: bool) -> list[str]:
    """The store's ok clips whose files can be read; the others stop the run with their list, or with
    `allow_missing` are left out and listed in OUT/excluded_clips.csv."""
    ids = store.ok_ids()
    problems = {i: why for i, why in store.clip_problems(ids).items() if why}
    if problems and not allow_missing:
        raise store.unreadable_error(problems, "embed")
    excluded = out / "excluded_clips.csv"
    if problems:
        frame = pd.DataFrame({"clip_id": list(problems), "split": "", "reason": list(problems.values())})
        atomic_write_text(excluded, frame.to_csv(index=False))
        log.warning("leaving out %d unreadable clips of %s (listed in %s)", len(problems), store.path, excluded)
    else:
        excluded.unlink(missing_ok=True)
    return [i for i in ids if i not in problems]
