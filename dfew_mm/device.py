"""Which device runs a model and with which autocast: one choice for every command."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from dfew_mm.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA (the process's local rank) when visible, else CPU; 'cuda' without CUDA is an error."""
    if preference not in DEVICE_CHOICES:
        raise ConfigError(f"device {preference!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA device is visible; use cpu or auto")
    if preference != "cpu" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when `amp`; full precision otherwise (CPU runs are fp32)."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
