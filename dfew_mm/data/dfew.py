"""The DFEW protocol: split files, 5 folds, clip file index, face frame folders, and their validation.

Layout: ROOT/Clip/original/<id>.mp4 and ROOT/EmoLabel_DataSplit/{train,test}(single-labeled)/set_k.csv
with columns `video_name,label` and labels 1..7 (see constants.CLASSES). Clip ids are normalised to
integers, so `1.mp4`, `00001.mp4` and a CSV row `00001` are the same clip. DFEW also distributes
face frames (FACE_SOURCES): every frame of a clip, ROOT/Clip/clip_224x224/<id>/1.jpg ..., and 16
frames spread over it, ROOT/Clip/clip_224x224_16f/<id>/1.jpg .. 16.jpg; some copies hold only those
and the split files, without Clip/original.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfew_mm.constants import CLASSES, FACE_SOURCE_DETECT, NUM_CLASSES
from dfew_mm.data.frame_folders import FrameFolders, index_frame_folders
from dfew_mm.errors import DatasetError

log = logging.getLogger(__name__)
SPLIT_DIRNAME = "EmoLabel_DataSplit"
TRAIN_DIR = "train(single-labeled)"
TEST_DIR = "test(single-labeled)"
CLIP_DIR = Path("Clip") / "original"
FOLDS = (1, 2, 3, 4, 5)
# The originals run at 23.976 to 25 fps; without one, full-rate face frames are timed at this rate.
NOMINAL_FPS = 24.0
FACE_SOURCES = {source.name: source for source in (
    FrameFolders("clip_224x224", Path("Clip") / "clip_224x224", full_rate=True, fps=NOMINAL_FPS, dataset="DFEW"),
    FrameFolders("clip_224x224_16f", Path("Clip") / "clip_224x224_16f", full_rate=False, fps=NOMINAL_FPS,
                 dataset="DFEW"),
)}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".flv", ".mpg", ".mpeg", ".webm", ".gif", ".m4v")
EXPECTED_LAYOUT = (
    "expected DFEW layout:\n"
    "  ROOT/Clip/original/<id>.mp4 (and/or face frames ROOT/Clip/clip_224x224[_16f]/<id>/1.jpg ...)\n"
    f"  ROOT/{SPLIT_DIRNAME}/{TRAIN_DIR}/set_1.csv .. set_5.csv\n"
    f"  ROOT/{SPLIT_DIRNAME}/{TEST_DIR}/set_1.csv .. set_5.csv\n"
    "(CSV columns video_name,label; labels 1..7). Use --splits-dir if the split files live elsewhere."
)


@dataclass(frozen=True)
class Fold:
    """One DFEW fold. Frames are indexed by clip id (int) with a 0-based `label` column."""

    k: int
    train: pd.DataFrame
    test: pd.DataFrame


def is_clip_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() rejects or reads otherwise."""
    return text.isascii() and text.isdigit()


def normalise_clip_id(raw: object, source: str) -> int:
    """'00042', '42', 42 and '42.mp4' all mean clip 42."""
    text = str(raw).strip()
    stem = Path(text).stem if Path(text).suffix.lower() in VIDEO_SUFFIXES else text
    if not is_clip_number(stem):
        raise DatasetError(f"{source}: clip name '{raw}' is not a DFEW clip number")
    return int(stem)


def video_file_problem(path: Path) -> str:
    """'' for a readable regular file (or a link to one), else why it is not a video to extract."""
    try:
        path.stat()
    except OSError as err:
        if path.is_symlink():
            return "symlink loop" if err.errno == errno.ELOOP else "broken symlink"
        return f"not readable ({err.strerror})"
    if path.is_dir():
        return "a directory"
    if not path.is_file():
        return "not a regular file"
    return ""


def warn_skipped(folder: Path, skipped: list[tuple[str, str]], shown: int = 10) -> None:
    """One warning line naming the entries of a clip folder that were not taken as clips."""
    if skipped:
        names = ", ".join(f"{name} ({why})" for name, why in skipped[:shown])
        more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
        log.warning("%s: skipping %d entries that are not video files to extract: %s%s", folder, len(skipped),
                    names, more)


def read_split_csv(path: Path) -> pd.DataFrame:
    """Read one split CSV into a frame indexed by clip id with a 0-based `label` column."""
    if not path.is_file():
        raise DatasetError(f"missing split file {path}\n{EXPECTED_LAYOUT}")
    try:
        raw = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a readable CSV ({err})") from err
    columns = [c.strip() for c in raw.columns]
    if columns[:2] != ["video_name", "label"]:
        raise DatasetError(f"{path}: columns are {columns}, expected video_name,label")
    raw.columns = columns
    raw = raw.dropna(how="all")
    ids = [normalise_clip_id(v, str(path)) for v in raw["video_name"]]
    labels = pd.to_numeric(raw["label"].str.strip(), errors="coerce")
    bad = raw.loc[~labels.isin(range(1, NUM_CLASSES + 1)), ["video_name", "label"]]
    if len(bad):
        shown = ", ".join(f"{v}={lab}" for v, lab in bad.head(5).itertuples(index=False))
        raise DatasetError(f"{path}: {len(bad)} labels outside 1..{NUM_CLASSES} (e.g. {shown})")
    frame = pd.DataFrame({"clip_id": ids, "label": labels.astype(int).to_numpy() - 1})
    dup = frame["clip_id"][frame["clip_id"].duplicated()].unique()
    if len(dup):
        raise DatasetError(f"{path}: {len(dup)} clip ids listed twice (e.g. {', '.join(map(str, dup[:5]))})")
    return frame.set_index("clip_id")


def splits_dir_for(dfew_root: Path | None, splits_dir: Path | None) -> Path:
    """Where the EmoLabel_DataSplit folder is; accepts the folder itself or its parent."""
    base = Path(splits_dir) if splits_dir else (Path(dfew_root) / SPLIT_DIRNAME if dfew_root else None)
    if base is None:
        raise DatasetError("give --dfew-root or --splits-dir")
    if (base / SPLIT_DIRNAME).is_dir():
        base = base / SPLIT_DIRNAME
    if not base.is_dir():
        raise DatasetError(f"split folder {base} does not exist\n{EXPECTED_LAYOUT}")
    for sub in (TRAIN_DIR, TEST_DIR):
        if not (base / sub).is_dir():
            raise DatasetError(f"{base} has no '{sub}' folder\n{EXPECTED_LAYOUT}")
    return base


def load_fold(k: int, dfew_root: Path | None = None, splits_dir: Path | None = None) -> Fold:
    if k not in FOLDS:
        raise DatasetError(f"fold {k} does not exist: DFEW has folds {FOLDS[0]}..{FOLDS[-1]}")
    base = splits_dir_for(dfew_root, splits_dir)
    train_path, test_path = base / TRAIN_DIR / f"set_{k}.csv", base / TEST_DIR / f"set_{k}.csv"
    train, test = read_split_csv(train_path), read_split_csv(test_path)
    overlap = train.index.intersection(test.index)
    if len(overlap):
        raise DatasetError(
            f"fold {k}: {len(overlap)} clips are in both {train_path.name} (train) and "
            f"{test_path.name} (test), e.g. {', '.join(map(str, overlap[:5]))}; the split files are corrupt"
        )
    return Fold(k, train, test)


def load_folds(dfew_root: Path | None = None, splits_dir: Path | None = None,
               folds: tuple[int, ...] = FOLDS) -> list[Fold]:
    return [load_fold(k, dfew_root, splits_dir) for k in folds]


def index_clip_files(clips_dir: Path) -> dict[int, Path]:
    """Map clip id -> video file for a folder of `<id>.<ext>` files (ids normalised)."""
    if not clips_dir.is_dir():
        raise DatasetError(f"clip folder {clips_dir} does not exist\n{EXPECTED_LAYOUT}")
    index: dict[int, Path] = {}
    skipped: list[tuple[str, str]] = []
    for path in sorted(clips_dir.iterdir()):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        if not is_clip_number(path.stem):
            skipped.append((path.name, "not named by a clip number"))
            continue
        problem = video_file_problem(path)
        if problem:
            skipped.append((path.name, problem))
            continue
        clip_id = int(path.stem)
        if clip_id in index:
            raise DatasetError(f"{clips_dir}: clip {clip_id} exists twice ({index[clip_id].name}, {path.name})")
        index[clip_id] = path
    warn_skipped(clips_dir, skipped)
    return index


def face_source(name: str) -> FrameFolders | None:
    """The face frame folder named `name`; None for `detect` (faces detected in the originals)."""
    if name == FACE_SOURCE_DETECT:
        return None
    if name not in FACE_SOURCES:
        valid = ", ".join([FACE_SOURCE_DETECT, *FACE_SOURCES])
        raise DatasetError(f"unknown face source '{name}': choose one of {valid}")
    return FACE_SOURCES[name]


def _frame_folder_id(name: str) -> int | None:
    return int(name) if is_clip_number(name) else None


def index_face_frames(dfew_root: Path, source: FrameFolders) -> dict[int, Path]:
    """clip id -> its folder of face frames in `source` ({} when the copy does not have that folder)."""
    return index_frame_folders(Path(dfew_root) / source.folder, _frame_folder_id)  # type: ignore[return-value]


def clip_sources(dfew_root: Path) -> tuple[dict[int, Path] | None, dict[str, dict[int, Path]]]:
    """(clip id -> original video, None without Clip/original; face source -> clip id -> frame folder,
    for the face frame folders this copy has). DatasetError when it has neither."""
    root = Path(dfew_root)
    frames = {name: index_face_frames(root, s) for name, s in FACE_SOURCES.items() if (root / s.folder).is_dir()}
    if not (root / CLIP_DIR).is_dir():
        if not frames:
            raise DatasetError(f"clip folder {root / CLIP_DIR} does not exist, nor any face frame folder\n"
                               f"{EXPECTED_LAYOUT}")
        return None, frames
    return index_clip_files(root / CLIP_DIR), frames


def fold_summary(folds: list[Fold], clip_files: dict[int, Path] | None,
                 face_frames: dict[str, dict[int, Path]] | None = None) -> pd.DataFrame:
    """Per fold and split: clip counts, class distribution, how many have a video file (`with_video`)
    and how many have face frames in each of `face_frames` (`with_<source>`)."""
    rows = []
    for fold in folds:
        for split, frame in (("train", fold.train), ("test", fold.test)):
            counts = np.bincount(frame["label"], minlength=NUM_CLASSES)
            row = {"fold": fold.k, "split": split, "clips": len(frame)}
            row.update({name: int(c) for name, c in zip(CLASSES, counts)})
            if clip_files is not None:
                row["with_video"] = int(frame.index.isin(list(clip_files)).sum())
            for name, folders in (face_frames or {}).items():
                row[f"with_{name}"] = int(frame.index.isin(list(folders)).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def unique_clips(folds: list[Fold]) -> pd.Index:
    return pd.Index(sorted(set().union(*(set(f.train.index) | set(f.test.index) for f in folds))))
