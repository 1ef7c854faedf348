"""The sample/batch contract shared by the data pipeline and the models (below both).

A sample is one clip as tensors, a batch is samples stacked by `collate`; every modality comes
with a validity mask, so absent modalities and padding are explicit. Shapes: T frames, S face
size, F filterbank frames (10 ms each), B clips.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import torch
from torch.utils.data import get_worker_info


class Sample(TypedDict):
    video: torch.Tensor  # (T, 3, S, S) uint8 RGB face crops
    video_mask: torch.Tensor  # (T,) bool, a face was found in that frame
    pose: torch.Tensor  # (T, 33, 4) float32 x, y, z, visibility
    pose_mask: torch.Tensor  # (T,) bool
    blendshapes: NotRequired[torch.Tensor]  # (T, 52) float32 FaceLandmarker expression scores (ClipDataset
    blendshapes_mask: NotRequired[torch.Tensor]  # (T,) bool                                     always sets them)
    audio: torch.Tensor  # (F, 128) float32 log-mel filterbank (not yet normalised)
    audio_mask: torch.Tensor  # (F,) bool, false for padding and for clips without audio
    audio_start: float  # seconds of clip time at audio[0] (non-zero after a random crop)
    frame_time: torch.Tensor  # (T,) float32 seconds
    label: int  # 0-based class index
    clip_id: str
    # Only for a waveform speech encoder: the 16 kHz audio of the filterbank window.
    waveform: NotRequired[torch.Tensor]  # (F x 160,) float32 in [-1, 1)
    waveform_mask: NotRequired[torch.Tensor]  # (F x 160,) bool


class Batch(TypedDict):
    video: torch.Tensor  # (B, T, 3, S, S) uint8
    video_mask: torch.Tensor  # (B, T) bool
    pose: torch.Tensor  # (B, T, 33, 4) float32
    pose_mask: torch.Tensor  # (B, T) bool
    blendshapes: NotRequired[torch.Tensor]  # (B, T, 52) float32
    blendshapes_mask: NotRequired[torch.Tensor]  # (B, T) bool
    audio: torch.Tensor  # (B, F, 128) float32
    audio_mask: torch.Tensor  # (B, F) bool
    audio_start: torch.Tensor  # (B,) float32 seconds
    frame_time: torch.Tensor  # (B, T) float32 seconds
    label: torch.Tensor  # (B,) int64
    clip_id: list[str]
    waveform: NotRequired[torch.Tensor]  # (B, F x 160) float32, only for a waveform speech encoder
    waveform_mask: NotRequired[torch.Tensor]  # (B, F x 160) bool
    # Only when training from an embedding cache (`dfew_mm embed`): frozen-backbone outputs that
    # replace running the video / audio encoders.
    video_emb: NotRequired[torch.Tensor]  # (B, T, D_v) float32
    audio_emb: NotRequired[torch.Tensor]  # (B, T_a, D_a) float32
    audio_emb_mask: NotRequired[torch.Tensor]  # (B, T_a) bool
    audio_emb_time: NotRequired[torch.Tensor]  # (B, T_a) float32 seconds


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
    cached = {key: stack(key) for key in ("video_emb", "audio_emb", "audio_emb_mask", "audio_emb_time",
                                          "waveform", "waveform_mask", "blendshapes", "blendshapes_mask")
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
