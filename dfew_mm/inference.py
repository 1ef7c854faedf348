"""The one inference loop: validation during training, `evaluate`, `embed` and `predict` all run it,
so that a metric does not depend on the command that produced it (same device choice, same
autocast, inference mode, batches moved the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfew_mm.batch import Batch, batch_to
from dfew_mm.device import autocast, resolve_device

__all__ = ["Predictions", "predict_logits", "resolve_device", "run_inference"]
Out = TypeVar("Out")


@dataclass
class Predictions:
    clip_ids: list[str]
    labels: np.ndarray  # (N,) int64, 0-based classes
    logits: np.ndarray  # (N, C) float32, C classes

    @property
    def probs(self) -> np.ndarray:
        """(N, C) softmax probabilities."""
        return torch.softmax(torch.from_numpy(self.logits), dim=-1).numpy()

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(axis=1) if len(self.logits) else np.zeros(0, np.int64)

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        return Predictions([i for p in parts for i in p.clip_ids],
                           np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int64),
                           np.concatenate([p.logits for p in parts]) if parts else np.zeros((0, 0), np.float32))


def run_inference(fn: Callable[[Batch], Out], loader: DataLoader, device: torch.device, amp: bool,
                  progress: bool = False, desc: str = "inference") -> Iterator[tuple[Batch, Out]]:
    """Yield (batch on `device`, fn(batch)) for every batch, computed in inference mode under autocast."""
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None if progress else True):
        batch = batch_to(batch, device)
        with torch.inference_mode(), autocast(device, amp):
            out = fn(batch)
        yield batch, out


def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                   modalities: Sequence[str] | None = None, progress: bool = False,
                   desc: str = "predict") -> Predictions:
    """Logits of `model` (in eval mode) for every clip of `loader`, in loader order."""
    model.eval()
    ids: list[str] = []
    labels, logits = [], []
    mods = list(modalities) if modalities is not None else None
    for batch, out in run_inference(lambda b: model(b, modalities=mods), loader, device, amp, progress, desc):
        ids += batch["clip_id"]
        labels.append(batch["label"].cpu().numpy())
        logits.append(out.float().cpu().numpy())  # (B, C)
    if not ids:
        return Predictions([], np.zeros(0, np.int64), np.zeros((0, model.num_classes), np.float32))
    return Predictions(ids, np.concatenate(labels).astype(np.int64), np.concatenate(logits))
