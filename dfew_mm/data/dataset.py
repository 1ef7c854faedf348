"""Torch dataset over the feature store: fold lists -> samples -> batches.

Samples are plain array loads of the per-clip npz (no image decoding), resampled to a fixed
number of frames and audio filterbank frames, each modality with a validity mask. The
validation split is carved out of the training fold (stratified, seeded); the test fold is
only used at the end of training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NotRequired, Sequence, TypedDict

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, get_worker_info

from dfew_mm.config import DataConfig
from dfew_mm.constants import MODALITIES, N_MELS, N_POSE_LANDMARKS, POSE_CHANNELS
from dfew_mm.data.dfew import load_fold
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import StoreError

if TYPE_CHECKING:
    from dfew_mm.data.embeddings import EmbeddingCache

log = logging.getLogger(__name__)

FaceTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
SECONDS_PER_AUDIO_FRAME = 0.01  # 10 ms filterbank hop


class Sample(TypedDict):
    video: torch.Tensor  # (T, 3, S, S) uint8 RGB face crops
    video_mask: torch.Tensor  # (T,) bool, a face was found in that frame
    pose: torch.Tensor  # (T, 33, 4) float32 x, y, z, visibility
    pose_mask: torch.Tensor  # (T,) bool
    audio: torch.Tensor  # (F, 128) float32 log-mel filterbank (not yet normalised)
    audio_mask: torch.Tensor  # (F,) bool, false for padding and for clips without audio
    audio_start: float  # seconds of clip time at audio[0] (non-zero after a random crop)
    frame_time: torch.Tensor  # (T,) float32 seconds
    label: int  # 0-based class index
    clip_id: str


class Batch(TypedDict):
    video: torch.Tensor  # (B, T, 3, S, S) uint8
    video_mask: torch.Tensor  # (B, T) bool
    pose: torch.Tensor  # (B, T, 33, 4) float32
    pose_mask: torch.Tensor  # (B, T) bool
    audio: torch.Tensor  # (B, F, 128) float32
    audio_mask: torch.Tensor  # (B, F) bool
    audio_start: torch.Tensor  # (B,) float32 seconds
    frame_time: torch.Tensor  # (B, T) float32 seconds
    label: torch.Tensor  # (B,) int64
    clip_id: list[str]
    # Only when training from an embedding cache (`dfew_mm embed`): frozen-backbone outputs that
    # replace running the video / audio encoders.
    video_emb: NotRequired[torch.Tensor]  # (B, T, D_v) float32
    audio_emb: NotRequired[torch.Tensor]  # (B, T_a, D_a) float32
    audio_emb_mask: NotRequired[torch.Tensor]  # (B, T_a) bool
    audio_emb_time: NotRequired[torch.Tensor]  # (B, T_a) float32 seconds


# -- fold lists -> store ids -------------------------------------------------------------------
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


def _usable(store: FeatureStore, ids: Sequence[str]) -> dict[str, str]:
    """clip id -> reason it cannot be used ('' when usable)."""
    manifest = store.manifest.set_index("clip_id")
    reasons = {}
    for clip_id in ids:
        if clip_id not in manifest.index:
            reasons[clip_id] = "not extracted"
        elif manifest.at[clip_id, "status"] != "ok":
            reasons[clip_id] = f"extraction {manifest.at[clip_id, 'status']}: {manifest.at[clip_id, 'error']}"
        elif clip_id not in store:
            reasons[clip_id] = "record present but clip file missing"
        else:
            reasons[clip_id] = ""
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


def fold_splits(store: FeatureStore, data_cfg: DataConfig, seed: int) -> FoldSplits:
    """Train/val/test clip ids of `data_cfg.fold` that are present in the store."""
    root = Path(data_cfg.dfew_root) if data_cfg.dfew_root else None
    splits_dir = Path(data_cfg.splits_dir) if data_cfg.splits_dir else None
    fold = load_fold(data_cfg.fold, root, splits_dir)
    excluded, kept = [], {}
    for name, frame in (("train", fold.train), ("test", fold.test)):
        ids = [str(int(i)) for i in frame.index]
        reasons = _usable(store, ids)
        bad = [i for i in ids if reasons[i]]
        if bad and not data_cfg.allow_missing:
            first = ", ".join(f"{i} ({reasons[i]})" for i in bad[:5])
            raise StoreError(
                f"{len(bad)} of {len(ids)} {name} clips of fold {fold.k} are not usable in feature store "
                f"{store.path}: {first}{' ...' if len(bad) > 5 else ''}. Extract them, or pass "
                "--allow-missing (data.allow_missing=true) to leave them out and record the list."
            )
        excluded += [{"clip_id": i, "split": name, "reason": reasons[i]} for i in bad]
        good = frame.loc[[int(i) for i in ids if not reasons[i]], "label"].to_numpy(dtype=np.int64)
        kept[name] = Split([i for i in ids if not reasons[i]], good)
    if excluded:
        log.warning("fold %d: leaving out %d clips missing from or failed in %s (first: %s)", fold.k,
                    len(excluded), store.path, ", ".join(e["clip_id"] for e in excluded[:5]))
    if not kept["train"].ids or not kept["test"].ids:
        raise StoreError(f"fold {fold.k}: no usable train or test clips in feature store {store.path}")
    train = kept["train"]
    is_val = stratified_val_split(train.labels, data_cfg.val_fraction, seed)
    if not is_val.any():
        raise StoreError(f"fold {fold.k}: too few training clips ({len(train.ids)}) to carve a validation split")
    pick = lambda mask: Split([i for i, m in zip(train.ids, mask) if m], train.labels[mask])  # noqa: E731
    return FoldSplits(pick(~is_val), pick(is_val), kept["test"],
                      pd.DataFrame(excluded, columns=["clip_id", "split", "reason"]))


# -- per-clip resampling ---------------------------------------------------------------------------
def frame_indices(n_stored: int, n_out: int, rng: np.random.Generator | None) -> np.ndarray:
    """(n_out,) indices into n_stored frames: segment centres, or a random frame per segment."""
    edges = np.linspace(0, n_stored, n_out + 1)
    if rng is None:
        points = (edges[:-1] + edges[1:]) / 2
    else:
        points = edges[:-1] + rng.random(n_out) * (edges[1:] - edges[:-1])
    return np.clip(points.astype(np.int64), 0, max(n_stored - 1, 0))


def crop_audio(fbank: np.ndarray, n_out: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(F, 128) -> (n_out, 128) zero-padded, its (n_out,) mask, and the start frame of the crop."""
    start = 0
    if len(fbank) > n_out:
        start = int(rng.integers(0, len(fbank) - n_out + 1)) if rng is not None else 0
        fbank = fbank[start:start + n_out]
    out = np.empty((n_out, N_MELS), dtype=np.float32)
    out[:len(fbank)] = fbank
    out[len(fbank):] = 0.0
    mask = np.zeros(n_out, dtype=bool)
    mask[:len(fbank)] = True
    return out, mask, start


class ClipDataset(Dataset):
    """Clips of one split from a feature store, as `Sample` dicts.

    Only the arrays of the requested modalities are read; absent modalities come as zeros with
    an all-false mask so that batches always have the same keys. With `train=True` frames and
    the audio crop are drawn at random from a generator seeded by (seed, epoch, index), so runs
    and resumed runs see the same samples. With an embedding `cache`, faces and filterbanks are
    not read: the cached frozen-backbone outputs of the same (centre) frames come instead.
    """

    def __init__(self, store: FeatureStore, clip_ids: Sequence[str], labels: Sequence[int], data_cfg: DataConfig,
                 modalities: Sequence[str], train: bool, face_transform: FaceTransform | None = None,
                 seed: int = 0, cache: EmbeddingCache | None = None):
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise StoreError(f"modalities {list(modalities)}: choose a non-empty subset of {', '.join(MODALITIES)}")
        if len(clip_ids) != len(labels):
            raise ValueError(f"{len(clip_ids)} clip ids but {len(labels)} labels")
        self.store, self.ids, self.labels = store, list(clip_ids), np.asarray(labels, dtype=np.int64)
        self.cfg, self.modalities, self.train = data_cfg, tuple(modalities), train
        self.face_transform, self.seed, self.epoch = face_transform, seed, 0
        self.cache = cache
        if cache is not None and face_transform is not None:
            raise ValueError("a face_transform cannot apply to cached embeddings; read the store instead")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def load_arrays(self, clip_id: str) -> dict[str, np.ndarray]:
        """The stored arrays one sample needs; subclasses override this to read from elsewhere."""
        wanted = {"frame_time"}
        if "video" in self.modalities:
            wanted |= {"face_mask"} if self.cache is not None else {"faces", "face_mask"}
        if "pose" in self.modalities:
            wanted |= {"pose", "pose_mask"}
        if "audio" in self.modalities and self.cache is None:
            wanted.add("audio")
        path = self.store.clip_path(clip_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in wanted}
        except (OSError, KeyError, ValueError) as err:
            raise StoreError(f"cannot read clip {clip_id} from {path}: {err}; re-extract it") from err

    def __getitem__(self, index: int) -> Sample:
        clip_id, cfg = self.ids[index], self.cfg
        arrays = self.load_arrays(clip_id)
        # Cached embeddings belong to the centre frames, so the cache path samples those too.
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train and self.cache is None else None
        t_stored = len(arrays["frame_time"])
        idx = frame_indices(t_stored, cfg.frames, rng)
        if len(idx) == t_stored and (idx == np.arange(t_stored)).all():
            idx = slice(None)  # every stored frame in order: use the loaded arrays without a copy
        present = np.full(cfg.frames, t_stored > 0)
        frame_time = arrays["frame_time"][idx] if t_stored else np.zeros(cfg.frames, np.float32)
        size = cfg.face_size
        if "video" in self.modalities and t_stored and self.cache is None:
            faces = arrays["faces"]
            if faces.shape[1:] != (size, size, 3):
                raise StoreError(f"clip {clip_id}: faces are {faces.shape[1:]}, data.face_size={size} expects "
                                 f"({size}, {size}, 3); set data.face_size to the store's face size")
            if self.face_transform is not None:
                faces = self.face_transform(faces, rng if rng is not None else np.random.default_rng([self.seed, index]))
            # (T, S, S, 3) memory seen as (T, 3, S, S): a channels-last view, no copy
            video = torch.from_numpy(np.ascontiguousarray(faces[idx])).permute(0, 3, 1, 2)
            video_mask = torch.from_numpy(arrays["face_mask"][idx] & present)
        else:
            video = torch.zeros(cfg.frames, size, size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
            video_mask = torch.zeros(cfg.frames, dtype=torch.bool)
            if "video" in self.modalities and t_stored:  # cached: only the mask comes from the store
                video_mask = torch.from_numpy(arrays["face_mask"][idx] & present)
        if "pose" in self.modalities and t_stored:
            pose = torch.from_numpy(np.asarray(arrays["pose"][idx], dtype=np.float32))  # (T, 33, 4)
            pose_mask = torch.from_numpy(arrays["pose_mask"][idx] & present)
        else:
            pose = torch.zeros(cfg.frames, N_POSE_LANDMARKS, POSE_CHANNELS)
            pose_mask = torch.zeros(cfg.frames, dtype=torch.bool)
        fbank = arrays.get("audio", np.zeros((0, N_MELS), np.float16))
        audio, audio_mask, start = crop_audio(fbank, cfg.audio_frames, rng)
        sample = Sample(video=video, video_mask=video_mask, pose=pose, pose_mask=pose_mask,
                      audio=torch.from_numpy(audio), audio_mask=torch.from_numpy(audio_mask),
                      audio_start=start * SECONDS_PER_AUDIO_FRAME,
                      frame_time=torch.from_numpy(np.asarray(frame_time, dtype=np.float32)),
                      label=int(self.labels[index]), clip_id=clip_id)
        if self.cache is not None:
            sample.update(self.cache.load(clip_id, self.modalities))  # type: ignore[typeddict-item]
        return sample


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack that, inside a DataLoader worker, writes straight into shared memory (as torch's
    default_collate does), so the batch is not copied again on its way to the main process."""
    out = None
    if get_worker_info() is not None:
        numel = sum(t.numel() for t in tensors)
        storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
        out = tensors[0].new(storage).resize_(len(tensors), *tensors[0].shape)
    return torch.stack(tensors, out=out)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a `Batch` (all samples share T, F and S by construction)."""
    stack = lambda key: _stack([s[key] for s in samples])  # noqa: E731
    # Stack faces in their stored (T, S, S, 3) layout (a plain memcpy) and view them as
    # (B, T, 3, S, S); the encoder then works channels-last without another copy.
    video = _stack([s["video"].permute(0, 2, 3, 1) for s in samples]).permute(0, 1, 4, 2, 3)
    cached = {key: stack(key) for key in ("video_emb", "audio_emb", "audio_emb_mask", "audio_emb_time")
              if key in samples[0]}
    return Batch(**cached, video=video, video_mask=stack("video_mask"), pose=stack("pose"),
                 pose_mask=stack("pose_mask"), audio=stack("audio"), audio_mask=stack("audio_mask"),
                 audio_start=torch.tensor([s["audio_start"] for s in samples], dtype=torch.float32),
                 frame_time=stack("frame_time"),
                 label=torch.tensor([s["label"] for s in samples], dtype=torch.int64),
                 clip_id=[s["clip_id"] for s in samples])


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """Move the tensors of a batch to a device (non-blocking from pinned memory)."""
    return Batch(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()})  # type: ignore[typeddict-item]
