"""`dfew_mm embed`: run the frozen video/audio encoders once over a store and cache their outputs.

The cache layout and its reader are in dfew_mm.data.embeddings; training reads the cache instead
of faces and filterbanks when `data.embedding_cache` is set.
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
from dfew_mm.data.embeddings import CACHED_MODALITIES, EmbeddingCache, cache_meta
from dfew_mm.data.store import FeatureStore, check_zip_file
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.files import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from dfew_mm.device import resolve_device
from dfew_mm.inference import run_inference
from dfew_mm.models import ENCODERS, build_model
from dfew_mm.models.fit import reads_waveform

log = logging.getLogger(__name__)


def build_cache(cfg: ExperimentConfig, out: str | Path, batch_size: int = 16, device: str = "auto",
                progress: bool = True) -> Path:
    """Embed every usable clip of `cfg.data.store` with the config's video/audio encoders.

    Resumable: clips already in the cache are skipped. The encoders are built and loaded
    (pretrained weights as configured) once; their weights are saved with the cache.
    """
    if not cfg.data.store:
        raise ConfigError("no feature store given: pass --store FEATURES (data.store=FEATURES)")
    out = Path(out)
    modalities = [m for m in cfg.model.modalities if m in CACHED_MODALITIES]
    if not modalities:
        raise ConfigError("nothing to embed: the cache holds video and/or audio; pose is read from the store")
    meta = cache_meta(cfg, modalities)
    if (out / "meta.json").is_file():
        cache = EmbeddingCache(out)
        if cache.meta != meta:
            raise ConfigError(f"{out} holds embeddings made with other settings; choose another --out")
    store = FeatureStore(cfg.data.store)
    usable = usable_store_clips(store, out, cfg.data.allow_missing)  # before any model is built
    model_cfg = dataclasses.replace(cfg.model, modalities=modalities)
    model = build_model(model_cfg)
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
        for m in modalities:
            ENCODERS[m][1](model.encoders[m], model_cfg)  # pretrained weights as configured
        state = {m: model.encoders[m].state_dict() for m in modalities}
        atomic_write_bytes(encoders_path, lambda f: torch.save(state, f))
    atomic_write_bytes(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    model.to(dev).eval()

    remove_stale_temp_files([out, out / "clips"])
    todo = [i for i in usable if check_zip_file(out / "clips" / f"{i}.npz")]  # missing or damaged
    log.info("embedding %d clips (%d already cached) with %s on %s", len(todo), len(usable) - len(todo),
             ",".join(modalities), dev)
    dataset = ClipDataset(store, todo, np.zeros(len(todo), np.int64), cfg.data, modalities, train=False,
                          waveform=reads_waveform(cfg.model))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)

    def encode(batch) -> dict[str, torch.Tensor]:
        outputs = {}
        if "video" in modalities:
            outputs["video"] = model.encoders["video"](batch["video"])  # (B, T, D_v)
        if "audio" in modalities:
            tokens, mask, times = model.encoders["audio"](batch["audio"], batch["audio_mask"], batch["audio_start"])
            outputs.update(audio=tokens, audio_mask=mask, audio_time=times)  # (B, T_a, D_a), (B, T_a) x2
        return outputs

    for batch, outputs in run_inference(encode, loader, dev, cfg.train.amp, progress, desc="embed"):
        arrays = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in outputs.items()}
        for b, clip_id in enumerate(batch["clip_id"]):
            clip = {k: (v[b].astype(np.float16) if k in ("video", "audio") else v[b]) for k, v in arrays.items()}
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
