"""Checkpoints: atomic saves, RNG state for exact resume, loading with model-config checks.

A checkpoint holds `model` (weights), `config` (the resolved experiment config), `meta`, and `classes`:
the dataset's class names in label order, so that `evaluate` and `predict` size the heads and name
the outputs without the dataset. Checkpoints written before datasets had their own classes lack the
key and are read as models of the dataset their config names (DFEW for all of them).

A save that fails (full disk, no permission) raises one WriteError naming the file and leaves the
previous checkpoint and no temporary file behind; temporary files of saves killed outright are
removed when the next run starts (`remove_stale_checkpoint_temps`).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from dfew_mm.config import from_dict, to_dict
from dfew_mm.datasets import get_dataset
from dfew_mm.errors import DfewMMError, WriteError
from dfew_mm.files import atomic_write_bytes, remove_stale_temp_files
from dfew_mm.models import EmotionModel, build_model


def rng_state() -> dict:
    """All generator states, in types that `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Save atomically; on failure raise WriteError saying what a resume can start from."""
    path = Path(path)
    try:
        atomic_write_bytes(path, lambda f: torch.save(payload, f))
    except WriteError as err:
        last = path.parent / "last.pt"
        then = (f"then resume with `dfew_mm train --resume {path.parent}` (last.pt holds the last complete epoch)"
                if last.is_file() else "then start the run again (no complete checkpoint was written)")
        raise WriteError(f"{err}; {then}") from None


def remove_stale_checkpoint_temps(run_dir: Path) -> int:
    """Delete the temporary files of checkpoint saves whose process is dead (a kill during a save)."""
    removed, _ = remove_stale_temp_files([Path(run_dir)])
    return len(removed)


def model_config_diff(saved: dict, current: dict, prefix: str = "model") -> list[str]:
    """Dotted keys whose values differ between two model config dicts."""
    diff = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += model_config_diff(a, b, f"{prefix}.{key}")
        elif a != b:
            diff.append(f"{prefix}.{key}: checkpoint {a!r}, requested {b!r}")
    return diff


def read_checkpoint(path: Path, map_location) -> dict:
    if not Path(path).is_file():
        raise DfewMMError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)  # no code runs on load
    except Exception as err:  # truncated or foreign files fail in many ways
        raise DfewMMError(f"{path} is not a readable dfew_mm checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise DfewMMError(f"{path} is not a dfew_mm checkpoint (expected keys 'model' and 'config')")
    return ckpt


def checkpoint_classes(ckpt: dict, cfg) -> tuple[str, ...]:
    """The class names a checkpoint's heads predict: saved with it, else those of its config's dataset."""
    saved = ckpt.get("classes")
    if saved is None:
        return get_dataset(cfg.data.dataset).classes
    if not isinstance(saved, (list, tuple)) or not all(isinstance(c, str) for c in saved):
        raise DfewMMError(f"the checkpoint's 'classes' is not a list of class names: {saved!r}")
    return tuple(saved)


def load_weights(model: EmotionModel, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DfewMMError(f"{path} does not match its model configuration: {err}") from err


def load_checkpoint(path: str | Path, map_location="cpu", model_cfg=None):
    """(model in eval mode, ExperimentConfig, meta) from best.pt / last.pt; `model.classes` names its outputs.

    With `model_cfg`, the checkpoint must come from that model configuration (else DfewMMError
    listing the differing keys).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    cfg = from_dict(ckpt["config"])
    if model_cfg is not None:
        diff = model_config_diff(to_dict(cfg)["model"], dataclasses.asdict(model_cfg))
        if diff:
            raise DfewMMError(f"{path} was trained with a different model configuration: " + "; ".join(diff))
    model = build_model(cfg.model, checkpoint_classes(ckpt, cfg))
    load_weights(model, ckpt["model"], path)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), cfg, ckpt.get("meta", {})
