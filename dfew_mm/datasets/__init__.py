"""The dataset registry: every dataset's class (base.py has the protocol).

Adding a dataset is one file in this folder (a `Dataset` subclass with its classes, layout, split-file
parser, id normalisation and protocol) plus its line in DATASETS; `--dataset`, `folds`, extraction,
training, evaluation, `predict` and `synth` read everything else from the class.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dfew_mm.datasets.base import Dataset
from dfew_mm.datasets.dfew import Dfew
from dfew_mm.datasets.ferv39k import Ferv39k
from dfew_mm.datasets.mafw import Mafw
from dfew_mm.errors import ConfigError

DATASETS: dict[str, type[Dataset]] = {cls.name: cls for cls in (Dfew, Mafw, Ferv39k)}
DEFAULT_DATASET = "dfew"  # what `data.dataset` and `--dataset` default to


@contextmanager
def registered(*classes: type[Dataset]) -> Iterator[None]:
    """Add datasets for the duration of a `with` block."""
    taken = [cls.name for cls in classes if cls.name in DATASETS]
    if taken:
        raise ValueError(f"datasets {taken} are registered already")
    DATASETS.update({cls.name: cls for cls in classes})
    try:
        yield
    finally:
        for cls in classes:
            del DATASETS[cls.name]


def get_dataset(name: str) -> type[Dataset]:
    """The dataset class registered as `name`; ConfigError listing the valid names otherwise."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: valid datasets are {', '.join(DATASETS)}")
    return DATASETS[name]


def open_dataset(name: str, root: str | Path | None = None, splits_dir: str | Path | None = None) -> Dataset:
    """Dataset `name` bound to the copy at `root` (split files at `splits_dir` when given)."""
    return get_dataset(name)(root, splits_dir)


def default_classes() -> tuple[str, ...]:
    """The classes of the default dataset: what code that is given no classes uses (DFEW's, as always)."""
    return DATASETS[DEFAULT_DATASET].classes
