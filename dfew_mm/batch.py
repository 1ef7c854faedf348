"""The sample/batch contract shared by the data pipeline and the models (below both).

A sample is one clip as tensors, a batch is samples stacked by `collate`. Beside the keys below,
every registered modality adds its own, each with a validity mask, so absent modalities and
padding are explicit: the encoder class of each modality (dfew_mm.models.encoders) lists them with
their shapes (e.g. video (T, 3, S, S) uint8 + video_mask (T,)). Training from an embedding cache
adds `<modality>_emb` (L, D) float32, `<modality>_emb_mask` (L,) bool and `<modality>_emb_time` (L,)
seconds for each cached modality. T frames, B clips. Every input key `k` with a mask has it under
`k + "_mask"` (MASK_SUFFIX), which is what `mix` relies on.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import get_worker_info

MASK_SUFFIX = "_mask"


class Sample(TypedDict, total=False):
    frame_time: torch.Tensor  # (T,) float32 seconds
    label: int  # 0-based class index
    clip_id: str
    # ... and the modality keys: tensors, or floats such as audio_start (seconds)


class Batch(TypedDict, total=False):
    frame_time: torch.Tensor  # (B, T) float32 seconds
    label: torch.Tensor  # (B,) int64
    clip_id: list[str]
    # ... and the modality keys, stacked: tensors (B, ...), floats as (B,) float32


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack that, inside a DataLoader worker, writes straight into shared memory (as torch's
    default_collate does), so the batch is not copied again on its way to the main process."""
    out = None
    if get_worker_info() is not None:
        numel = sum(t.numel() for t in tensors)
        storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
        out = tensors[0].new(storage).resize_(len(tensors), *tensors[0].shape)
    return torch.stack(tensors, out=out)


def _stack_in_layout(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors in their memory layout and view the result in their shape: a plain memcpy for
    permuted views, e.g. faces stored (T, S, S, 3) and seen as (T, 3, S, S) stay channels-last."""
    first = tensors[0]
    order = sorted(range(first.dim()), key=lambda d: -first.stride(d))  # dims, outermost in memory first
    stacked = _stack([t.permute(order) for t in tensors])  # (B, *shape in memory order)
    return stacked.permute(0, *(1 + order.index(d) for d in range(first.dim())))  # (B, *shape)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a `Batch` (all samples of a dataset share their keys and shapes)."""
    batch: dict[str, Any] = {}
    for key, value in samples[0].items():
        values = [s[key] for s in samples]  # type: ignore[literal-required]
        if isinstance(value, torch.Tensor):
            batch[key] = _stack_in_layout(values)
        elif isinstance(value, str):
            batch[key] = values
        else:  # a number per clip: ints (label) as int64, floats (e.g. audio_start seconds) as float32
            batch[key] = torch.tensor(values)
    return batch  # type: ignore[return-value]


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """Move the tensors of a batch to a device (non-blocking from pinned memory)."""
    return Batch(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()})  # type: ignore[typeddict-item]


def mix(batch: Batch, order: torch.Tensor, lam: float) -> Batch:
    """Mixup across clips: clip i becomes lam x clip i + (1 - lam) x clip order[i], with the same `lam` for
    every modality. Each input with a mask is mixed (integer inputs such as uint8 faces rounded back to
    their dtype) and valid where both clips were; the rest (labels, ids, times) stays clip i's: the loss
    mixes the labels (dfew_mm.balance.Balancer.loss)."""
    out = dict(batch)
    for key, value in batch.items():
        mask = batch.get(key + MASK_SUFFIX)  # type: ignore[misc]
        if not isinstance(value, torch.Tensor) or not isinstance(mask, torch.Tensor):
            continue
        mixed = torch.lerp(value[order].float(), value.float(), lam)  # lam * a + (1 - lam) * b, (B, ...)
        out[key] = mixed if value.is_floating_point() else mixed.round_().to(value.dtype)
        out[key + MASK_SUFFIX] = mask & mask[order]
    return Batch(**out)  # type: ignore[typeddict-item]


def mixup_draw(alpha: float, key: list[int], size: int) -> tuple[torch.Tensor, float]:
    """A batch's mixup partners (a permutation of `size` clips) and coefficient lam ~ Beta(alpha, alpha),
    drawn from a generator seeded by `key` (e.g. seed, rank, epoch, step: resumed runs draw the same)."""
    rng = np.random.default_rng(key)
    return torch.from_numpy(rng.permutation(size)), float(rng.beta(alpha, alpha))
