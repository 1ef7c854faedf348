"""Reading the embedding cache of frozen-backbone experiments (written by dfew_mm.embed).

`dfew_mm embed` runs the encoders of the cacheable modalities (`cacheable` in
dfew_mm.models.encoders: video and audio) once over every clip of a store and saves their tokens;
training with `data.embedding_cache` and those encoders frozen (`freeze: all`) then reads the tokens
instead of faces and audio, so only the other encoders, fusion and the head are computed and a full
modality sweep over five folds takes minutes.

    CACHE/meta.json        cache format, data and encoder settings the cache was made with (checked on use)
    CACHE/encoders.pt      the encoders' weights, loaded into every model trained from the cache,
                           so its checkpoints also work on raw store batches
    CACHE/clips/<id>.npz   per cached modality m: m (L, D) float16 features, m_mask (L,) bool,
                           m_time (L,) float32 seconds (the encoder's `tokens`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dfew_mm.config import ExperimentConfig
from dfew_mm.data.store import READ_ERRORS, check_zip_file
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.models.encoders import ENCODERS
from dfew_mm.models.encoders.base import CACHE_SUFFIXES

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: every cached modality has features, mask and times; 1 (no key): video had features only
DATA_KEYS = ("frames", "face_size", "audio_frames")


def cacheable_modalities(cfg: ExperimentConfig) -> list[str]:
    """The modalities of `cfg` whose tokens an embedding cache holds."""
    return [m for m in cfg.model.modalities if ENCODERS[m].cacheable]


def cache_meta(cfg: ExperimentConfig, modalities: Sequence[str]) -> dict:
    meta = {"format": CACHE_FORMAT, "store": str(Path(cfg.data.store).resolve()), "modalities": list(modalities)}
    meta.update({key: getattr(cfg.data, key) for key in DATA_KEYS})
    for m in modalities:
        encoder = dataclasses.asdict(getattr(cfg.model, m))
        encoder.pop("freeze")
        meta[m] = encoder
    return meta


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{self.path} is not an embedding cache (no meta.json); create it with "
                             "`dfew_mm embed --config CONFIG --store FEATURES --out CACHE`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT:
            raise StoreError(f"embedding cache {self.path} was written by an earlier dfew_mm (cache format "
                             f"{self.meta.get('format', 1)}, now {CACHE_FORMAT}); embed again into a new --out")
        self.modalities: list[str] = self.meta["modalities"]

    def clip_path(self, clip_id: str) -> Path:
        return self.path / "clips" / f"{clip_id}.npz"

    def check(self, cfg: ExperimentConfig) -> None:
        """The training config must ask for the same frames and frozen encoders the cache holds."""
        wanted = cacheable_modalities(cfg)
        missing = [m for m in wanted if m not in self.modalities]
        if missing:
            raise ConfigError(f"embedding cache {self.path} has no {missing} embeddings; re-run `dfew_mm embed` "
                              f"with those modalities")
        for m in wanted:
            if getattr(cfg.model, m).freeze != "all":
                raise ConfigError(f"training from embedding cache {self.path} needs a frozen {m} encoder: "
                                  f"set model.{m}.freeze=all")
        current = cache_meta(cfg, wanted)
        diff = [f"{key}: cache {self.meta.get(key)!r}, config {current[key]!r}"
                for key in (*DATA_KEYS, *wanted) if self.meta.get(key) != current[key]]
        if diff:
            raise ConfigError(f"embedding cache {self.path} was made with other settings: " + "; ".join(diff))

    def verify(self, clip_ids: Sequence[str]) -> None:
        """Stop with the full list if any of `clip_ids` is missing from the cache or unreadable."""
        bad = {i: why for i in clip_ids if (why := check_zip_file(self.clip_path(i)))}
        if bad:
            shown = ", ".join(f"{i} ({why})" for i, why in list(bad.items())[:50])
            more = f" and {len(bad) - 50} more" if len(bad) > 50 else ""
            raise StoreError(f"embedding cache {self.path}: {len(bad)} clips cannot be read: {shown}{more}; run "
                             "`dfew_mm embed` again with the same --out (it redoes missing and damaged clips)")

    def encoder_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return torch.load(self.path / "encoders.pt", map_location="cpu", weights_only=True)

    def load(self, clip_id: str, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        path = self.clip_path(clip_id)
        if not path.is_file():
            raise StoreError(f"clip {clip_id} is not in embedding cache {self.path}; run `dfew_mm embed` again "
                             "(it adds missing clips)")
        out = {}
        try:
            with np.load(path, allow_pickle=False) as data:
                for m in modalities:  # under the batch keys an encoder's `tokens` reads cached tokens from
                    features, mask, times = (m + suffix for suffix in CACHE_SUFFIXES)
                    out[features] = torch.from_numpy(data[m].astype(np.float32))  # (L, D)
                    out[mask] = torch.from_numpy(data[f"{m}_mask"])  # (L,) bool
                    out[times] = torch.from_numpy(data[f"{m}_time"])  # (L,) seconds
        except READ_ERRORS as err:
            raise StoreError(f"cannot read clip {clip_id} from embedding cache {path} ({type(err).__name__}: {err}); "
                             "run `dfew_mm embed` again with the same --out (it redoes damaged clips)") from None
        return out
