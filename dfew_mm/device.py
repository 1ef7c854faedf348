"""Which device runs a model and with which autocast: one choice for every command."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch

from dfew_mm.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# cuBLAS: a fixed workspace per stream, so that its matmuls split their sums the same way every run
CUBLAS_WORKSPACE = ":4096:8"


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


def set_deterministic(on: bool) -> None:
    """`train.deterministic`: deterministic GPU kernels, or PyTorch's defaults.

    On: cuDNN's deterministic algorithms without benchmarking, cuBLAS with a fixed workspace (the
    environment variable must be set before the first cuBLAS call: call this before any CUDA work) and
    torch's deterministic mode, in which an operation without a deterministic CUDA kernel warns once
    instead of stopping the run (docs/reproducibility.md lists the ones this project's models meet).
    """
    if on and os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE) != CUBLAS_WORKSPACE:
        log.info("CUBLAS_WORKSPACE_CONFIG=%s from the environment is kept", os.environ["CUBLAS_WORKSPACE_CONFIG"])
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)
