"""Torch dataset over the feature store: clip ids -> `Sample` dicts (see dfew_mm.batch).

Samples are plain array loads of the per-clip npz (no image decoding), resampled to a fixed
number of frames. What each modality reads and how its tensors are cut is its encoder's business
(dfew_mm.models.encoders): this module picks the frames, loads the arrays the requested modalities
name, and asks each registered modality for its keys.
"""

from __future__ import annotations

import multiprocessing
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dfew_mm.batch import Sample
from dfew_mm.config import DataConfig, ModelConfig
from dfew_mm.data.embeddings import EmbeddingCache
from dfew_mm.data.store import READ_ERRORS, FeatureStore
from dfew_mm.errors import StoreError
from dfew_mm.models.encoders import ENCODERS
from dfew_mm.models.encoders.base import Augmentation, Frames

AUGMENT_STREAM = 1  # the augmentation generators' stream beside the frame sampler's (seed, epoch, index)
ArrayTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # a stored array -> same shape


def frame_indices(n_stored: int, n_out: int, rng: np.random.Generator | None) -> np.ndarray:
    """(n_out,) indices into n_stored frames: segment centres, or a random frame per segment."""
    edges = np.linspace(0, n_stored, n_out + 1)
    if rng is None:
        points = (edges[:-1] + edges[1:]) / 2
    else:
        points = edges[:-1] + rng.random(n_out) * (edges[1:] - edges[:-1])
    return np.clip(points.astype(np.int64), 0, max(n_stored - 1, 0))


class ClipDataset(Dataset):
    """Clips of one split from a feature store, as `Sample` dicts.

    Only the arrays of the requested modalities are read, as their encoders' settings in
    `model_cfg` say (e.g. the waveform for a waveform speech encoder; default: the default
    encoders); the other registered modalities come as zeros with all-false masks, so that batches
    always have the same keys. With `train=True` frames and crops are drawn at random from a
    generator seeded by (seed, epoch, index), so runs and resumed runs see the same samples; with
    `train=True` and `data.augment` each read modality's encoder also augments its part (`Encoder.augment`)
    from draws of its own stream, with one horizontal flip (probability `data.hflip`) for the whole clip.
    `transforms` change stored arrays before sampling, by array name (e.g. {"faces": Darken(0.5)}).
    With an embedding `cache`, the modalities it holds are not read from the store: their cached
    tokens of the same (centre) frames come instead.
    """

    def __init__(self, store: FeatureStore, clip_ids: Sequence[str], labels: Sequence[int], data_cfg: DataConfig,
                 modalities: Sequence[str], train: bool, transforms: Mapping[str, ArrayTransform] | None = None,
                 seed: int = 0, cache: EmbeddingCache | None = None, model_cfg: ModelConfig | None = None):
        unknown = [m for m in modalities if m not in ENCODERS]
        if unknown or not modalities:
            raise StoreError(f"modalities {list(modalities)}: choose a non-empty subset of {', '.join(ENCODERS)}")
        if len(clip_ids) != len(labels):
            raise ValueError(f"{len(clip_ids)} clip ids but {len(labels)} labels")
        self.store, self.ids, self.labels = store, list(clip_ids), np.asarray(labels, dtype=np.int64)
        self.cfg, self.modalities, self.train = data_cfg, tuple(modalities), train
        self.transforms, self.seed = dict(transforms or {}), seed
        # Shared with the loader's worker processes: persistent workers hold a copy of this dataset made
        # when they started, which would otherwise draw every epoch's frames and augmentation from epoch 0's.
        self._epoch = multiprocessing.RawValue("q", 0)
        self.cache = cache
        self.encoder_cfgs = {name: getattr(model_cfg or ModelConfig(), name) for name in ENCODERS}
        self.cached = tuple(m for m in self.modalities if cache is not None and m in cache.modalities)
        self.read = tuple(m for m in self.modalities if m not in self.cached)
        self.arrays = {"frame_time", *(a for m in self.read for a in ENCODERS[m].store_arrays(self.encoder_cfgs[m]))}
        if self.cached and self.transforms:
            raise ValueError("array transforms cannot apply to cached embeddings; read the store instead")

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def load_arrays(self, clip_id: str) -> dict[str, np.ndarray]:
        """The stored arrays one sample needs; subclasses override this to read from elsewhere."""
        path = self.store.clip_path(clip_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in self.arrays}
        except READ_ERRORS as err:  # damaged since the start-up check: name the clip and the repair
            raise self.store.read_error(clip_id, err) from None

    def augmentation(self, index: int) -> dict[str, Augmentation] | None:
        """Each read modality's augmentation draws for this sample (one flip for the clip, a generator per
        modality); None outside training, with `data.augment` off or from a cache."""
        if not (self.train and self.cfg.augment) or self.cached:
            return None
        key = [self.seed, self.epoch, index, AUGMENT_STREAM]
        flip = bool(np.random.default_rng(key).random() < self.cfg.hflip)
        return {name: Augmentation(flip, np.random.default_rng([*key, zlib.crc32(name.encode())]))
                for name in self.read}

    def __getitem__(self, index: int) -> Sample:
        clip_id, cfg = self.ids[index], self.cfg
        arrays = dict(self.load_arrays(clip_id))
        # Cached embeddings belong to the centre frames, so the cache path samples those too.
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train and not self.cached else None
        t_stored = len(arrays["frame_time"])
        idx = frame_indices(t_stored, cfg.frames, rng)
        if len(idx) == t_stored and (idx == np.arange(t_stored)).all():
            idx = slice(None)  # every stored frame in order: use the loaded arrays without a copy
        for name, transform in self.transforms.items():
            if name in arrays:
                draws = rng if rng is not None else np.random.default_rng([self.seed, index])
                arrays[name] = transform(arrays[name], draws)
        frames = Frames(idx, np.full(cfg.frames, t_stored > 0), t_stored, cfg, rng, clip_id)
        frame_time = arrays["frame_time"][idx] if t_stored else np.zeros(cfg.frames, np.float32)
        sample = Sample(frame_time=torch.from_numpy(np.asarray(frame_time, dtype=np.float32)),
                        label=int(self.labels[index]), clip_id=clip_id)
        augs = self.augmentation(index)
        for name, encoder in ENCODERS.items():
            enc_cfg = self.encoder_cfgs[name]
            if name in self.read:
                part = encoder.cut(enc_cfg, arrays, frames)
                if augs is not None:
                    part = encoder.augment(enc_cfg, part, augs[name])
                sample.update(part)  # type: ignore[typeddict-item]
            else:
                sample.update(encoder.absent(enc_cfg, frames))  # type: ignore[typeddict-item]
        if self.cached:
            sample.update(self.cache.load(clip_id, self.cached))  # type: ignore[union-attr, typeddict-item]
        return sample
