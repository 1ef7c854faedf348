"""Torch dataset over the feature store: clip ids -> `Sample` dicts (see dfew_mm.batch).

Samples are plain array loads of the per-clip npz (no image decoding), resampled to a fixed
number of frames and audio filterbank frames, each modality with a validity mask.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dfew_mm.batch import Sample
from dfew_mm.config import DataConfig
from dfew_mm.constants import (HOP_SAMPLES, MODALITIES, N_BLENDSHAPES, N_MELS, N_POSE_LANDMARKS, POSE_CHANNELS, WAVEFORM_ARRAY,
                               WAVEFORM_SCALE)
from dfew_mm.data.embeddings import EmbeddingCache
from dfew_mm.data.store import READ_ERRORS, FeatureStore
from dfew_mm.errors import StoreError

FaceTransform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
SECONDS_PER_AUDIO_FRAME = 0.01  # 10 ms filterbank hop


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


def crop_waveform(samples: np.ndarray, start_frame: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int16 -> the n_frames x HOP_SAMPLES samples from filterbank frame `start_frame` (the same
    window as the filterbank crop) as float32 in [-1, 1), zero-padded, and their (n,) mask."""
    n_out = n_frames * HOP_SAMPLES
    part = samples[start_frame * HOP_SAMPLES:start_frame * HOP_SAMPLES + n_out]
    out = np.zeros(n_out, np.float32)
    out[:len(part)] = part / WAVEFORM_SCALE
    mask = np.zeros(n_out, bool)
    mask[:len(part)] = True
    return out, mask


class ClipDataset(Dataset):
    """Clips of one split from a feature store, as `Sample` dicts.

    Only the arrays of the requested modalities are read; absent modalities come as zeros with
    an all-false mask so that batches always have the same keys. With `train=True` frames and
    the audio crop are drawn at random from a generator seeded by (seed, epoch, index), so runs
    and resumed runs see the same samples. With an embedding `cache`, faces and filterbanks are
    not read: the cached frozen-backbone outputs of the same (centre) frames come instead. With
    `waveform=True` (a waveform speech encoder) samples also hold the 16 kHz audio of the filterbank
    window, `waveform` (audio_frames x 160,) float32 with `waveform_mask`.
    """

    def __init__(self, store: FeatureStore, clip_ids: Sequence[str], labels: Sequence[int], data_cfg: DataConfig,
                 modalities: Sequence[str], train: bool, face_transform: FaceTransform | None = None,
                 seed: int = 0, cache: EmbeddingCache | None = None, waveform: bool = False):
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise StoreError(f"modalities {list(modalities)}: choose a non-empty subset of {', '.join(MODALITIES)}")
        if len(clip_ids) != len(labels):
            raise ValueError(f"{len(clip_ids)} clip ids but {len(labels)} labels")
        self.store, self.ids, self.labels = store, list(clip_ids), np.asarray(labels, dtype=np.int64)
        self.cfg, self.modalities, self.train = data_cfg, tuple(modalities), train
        self.face_transform, self.seed, self.epoch = face_transform, seed, 0
        self.cache = cache
        self.waveform = waveform and "audio" in self.modalities and cache is None
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
        if "blendshapes" in self.modalities:
            wanted |= {"blendshapes", "face_mask"}
        if "audio" in self.modalities and self.cache is None:
            wanted.add("audio")
        if self.waveform:
            wanted.add(WAVEFORM_ARRAY)
        path = self.store.clip_path(clip_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in wanted}
        except READ_ERRORS as err:  # damaged since the start-up check: name the clip and the repair
            raise self.store.read_error(clip_id, err) from None

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
        if "blendshapes" in self.modalities and t_stored:
            scores = np.asarray(arrays["blendshapes"][idx], dtype=np.float32)  # (T, 52)
            # valid where a face was found and the landmarker scored it (else the store holds zeros)
            shapes_mask = torch.from_numpy(arrays["face_mask"][idx] & scores.any(-1) & present)
            shapes = torch.from_numpy(scores)
        else:
            shapes = torch.zeros(cfg.frames, N_BLENDSHAPES)
            shapes_mask = torch.zeros(cfg.frames, dtype=torch.bool)
        fbank = arrays.get("audio", np.zeros((0, N_MELS), np.float16))
        audio, audio_mask, start = crop_audio(fbank, cfg.audio_frames, rng)
        sample = Sample(video=video, video_mask=video_mask, pose=pose, pose_mask=pose_mask, blendshapes=shapes,
                        blendshapes_mask=shapes_mask,
                      audio=torch.from_numpy(audio), audio_mask=torch.from_numpy(audio_mask),
                      audio_start=start * SECONDS_PER_AUDIO_FRAME,
                      frame_time=torch.from_numpy(np.asarray(frame_time, dtype=np.float32)),
                      label=int(self.labels[index]), clip_id=clip_id)
        if self.waveform:
            wave, wave_mask = crop_waveform(arrays[WAVEFORM_ARRAY], start, cfg.audio_frames)
            sample.update(waveform=torch.from_numpy(wave), waveform_mask=torch.from_numpy(wave_mask))
        if self.cache is not None:
            sample.update(self.cache.load(clip_id, self.modalities))  # type: ignore[typeddict-item]
        return sample
