"""Face frames a dataset distributes: a folder of per-clip frame folders, `ROOT/<folder>/<clip>/<n>.jpg`.

A dataset file describes each such folder as a `FrameFolders` (its name for `--face-source`, where it
lies under the root, whether it holds every frame of a clip or a fixed number spread over it, and the
dataset's nominal frame rate); this module lists the clips of one and the frames of a clip, in
numeric order (1.jpg, 2.jpg, ..., 10.jpg). Reading the images is extraction's
(dfew_mm.extract.face_frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class FrameFolders:
    """One face source a dataset distributes (picklable: it travels to the extraction workers)."""

    name: str  # the --face-source value, e.g. clip_224x224
    folder: Path  # relative to the dataset root, e.g. Clip/clip_224x224
    full_rate: bool  # every frame of the clip (True), or a fixed number spread over the clip's duration
    fps: float  # the dataset's nominal frame rate: frame times when a clip has no original video
    dataset: str  # whose frames these are, for messages (e.g. DFEW)


def frame_number(path: Path) -> int | None:
    """7 for `7.jpg` or `0007.jpg`; None for names that are not a frame number or not an image."""
    stem = path.stem
    if path.suffix.lower() not in IMAGE_SUFFIXES or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def frame_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(the frame images of one clip in numeric order, names of the other entries); empty lists for
    a folder that cannot be listed."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return [], []
    numbered = [(frame_number(p), p.name, p) for p in entries]
    frames = [p for n, _, p in sorted(t for t in numbered if t[0] is not None)]
    others = sorted(name for n, name, _ in numbered if n is None)
    return frames, others


def index_frame_folders(folder: Path, clip_id: Callable[[str], Hashable | None]) -> dict[Hashable, Path]:
    """clip id -> its frame folder, for the subfolders of `folder` whose name `clip_id` turns into an id
    (None: not a clip; those are named in one warning). {} when `folder` does not exist."""
    if not folder.is_dir():
        return {}
    index: dict[Hashable, Path] = {}
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        key = clip_id(path.name) if path.is_dir() else None
        if key is None:
            skipped.append(path.name)
        elif key in index:
            skipped.append(f"{path.name} (clip {key} twice)")
        else:
            index[key] = path
    if skipped:
        log.warning("%s: skipping %d entries that are not clip frame folders: %s%s", folder, len(skipped),
                    ", ".join(skipped[:10]), f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    return index
