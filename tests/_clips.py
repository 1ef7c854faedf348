"""A folder of links to the real CREMA-D sample clips in ../shared, for extraction tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def cremad_folder(folder: Path, clips_dir: Path, names: Iterable[str]) -> Path:
    """`folder` (created) with `<name>.flv` links to the CREMA-D samples `names`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.flv").symlink_to(clips_dir / "cremad" / f"{name}.flv")
    return folder
