"""The modality registry: every modality's encoder class, in canonical order (base.py has the protocol).

Adding a modality is one file in this folder (an `Encoder` subclass with its config, store arrays,
sample cutting and tokens) plus its line in ENCODERS; configs, the dataset, the embedding cache,
evaluation and the CLI read everything else from the class.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Collection, Iterator, Sequence

from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.models.encoders.audio import AudioEncoder
from dfew_mm.models.encoders.base import Encoder
from dfew_mm.models.encoders.blendshapes import BlendshapeEncoder
from dfew_mm.models.encoders.pose import PoseEncoder
from dfew_mm.models.encoders.video import VideoEncoder

ENCODERS: dict[str, type[Encoder]] = {cls.name: cls for cls in (VideoEncoder, PoseEncoder, AudioEncoder,
                                                                 BlendshapeEncoder)}


@contextmanager
def registered(*classes: type[Encoder]) -> Iterator[None]:
    """Add modalities (after the built-in ones) for the duration of a `with` block."""
    taken = [cls.name for cls in classes if cls.name in ENCODERS]
    if taken:
        raise ValueError(f"modalities {taken} are registered already")
    ENCODERS.update({cls.name: cls for cls in classes})
    try:
        yield
    finally:
        for cls in classes:
            del ENCODERS[cls.name]


def default_modalities() -> list[str]:
    """What `model.modalities` holds unless a config says otherwise (what a default extraction serves)."""
    return [name for name, cls in ENCODERS.items() if cls.default]


def resolve_modalities(names: Sequence[str] | str) -> list[str]:
    """'video,pose' or ['video', 'pose'] -> checked list in the canonical order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"no modality given: choose a non-empty subset of {', '.join(ENCODERS)}")
    unknown = [n for n in names if n not in ENCODERS]
    if unknown:
        raise ConfigError(f"unknown modality {', '.join(unknown)}: valid modalities are {', '.join(ENCODERS)}")
    return [n for n in ENCODERS if n in names]


def store_fit_problems(model_cfg, face_size: int, arrays: Collection[str]) -> list[str]:
    """What a store (faces of `face_size` px, per-clip `arrays`) lacks for the modalities of `model_cfg`."""
    return [problem for name in resolve_modalities(list(model_cfg.modalities))
            for problem in ENCODERS[name].store_problems(getattr(model_cfg, name), face_size, arrays)]


def check_store_fits(model_cfg, face_size: int, arrays: Collection[str]) -> None:
    """Raise StoreError listing every mismatch between the configured encoders and the store, before training."""
    problems = store_fit_problems(model_cfg, face_size, arrays)
    if problems:
        raise StoreError("the feature store does not fit the model:\n  - " + "\n  - ".join(problems))
