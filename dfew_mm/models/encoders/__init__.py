"""The modality registry: every modality's encoder class, in canonical order (base.py has the protocol).

Adding a modality is one file in this folder (an `Encoder` subclass with its config, store arrays,
sample cutting and tokens) plus its line in ENCODERS; configs, the dataset, the embedding cache,
evaluation and the CLI read everything else from the class.

A registry line names the class ("module:Class") and the class is imported on first lookup, so that
code which only needs the modality names (predictions files, the analysis) imports no network code
(no torch, no transformers): the lazy name -> class tables of transformers' auto classes do the same.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import contextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Collection, Iterator, Mapping, Sequence

from dfew_mm.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from dfew_mm.models.encoders.base import Encoder


class EncoderRegistry(MutableMapping[str, "type[Encoder]"]):
    """Modality name -> `Encoder` subclass, in registration order; entries given as "module:Class" are
    imported when first looked up. Iterating, `len` and `in` read the names only."""

    def __init__(self, entries: Mapping[str, str | type[Encoder]]):
        self._entries: dict[str, str | type[Encoder]] = dict(entries)

    def __getitem__(self, name: str) -> type[Encoder]:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(import_module(module), attr)
            if entry.name != name:
                raise TypeError(f"the registry lists {entry.__name__} as '{name}' but its name is '{entry.name}'")
            self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, cls: type[Encoder]) -> None:
        self._entries[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"EncoderRegistry({', '.join(self._entries)})"


ENCODERS = EncoderRegistry({
    "video": "dfew_mm.models.encoders.video:VideoEncoder",
    "pose": "dfew_mm.models.encoders.pose:PoseEncoder",
    "audio": "dfew_mm.models.encoders.audio:AudioEncoder",
    "blendshapes": "dfew_mm.models.encoders.blendshapes:BlendshapeEncoder",
})


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
