"""DFEW: split files, 5 folds, clip file index, face frame folders, and their validation.

Layout: ROOT/Clip/original/<id>.mp4 and ROOT/EmoLabel_DataSplit/{train,test}(single-labeled)/set_k.csv
with columns `video_name,label` and labels 1..7 (CLASSES, in this order). Clip ids are normalised to
integers, so `1.mp4`, `00001.mp4` and a CSV row `00001` are the same clip (store id '1'). DFEW also
distributes face frames (FACE_SOURCES): every frame of a clip, ROOT/Clip/clip_224x224/<id>/1.jpg ...,
and 16 frames spread over it, ROOT/Clip/clip_224x224_16f/<id>/1.jpg .. 16.jpg; some copies hold only
those and the split files, without Clip/original.
Protocol: 5-fold cross-validation over the 11,697 single-labelled clips; fold k trains on
train(single-labeled)/set_k.csv and tests on test(single-labeled)/set_k.csv.

Sources: Jiang et al., "DFEW: A Large-Scale Database for Recognizing Dynamic Facial Expressions in the
Wild", ACM MM 2020 (https://dfew-dataset.github.io), and the README shipped with the dataset; the
split files as read by sunlicai/MAE-DFER preprocess/dfew.py (label order happy, sad, neutral, angry,
surprise, disgust, fear). The module-level functions keep integer ids; the `Dfew` class serves the
dataset protocol (store ids str(int)).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dfew_mm.datasets import base
from dfew_mm.datasets.base import (VIDEO_SUFFIXES, Dataset, Fold, SynthClip, bad_lines, clip_ids, is_clip_number,
                                   split_frame, video_file_problem, warn_skipped)
from dfew_mm.datasets.frame_folders import FrameFolders
from dfew_mm.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

# DFEW classes in label order: the split CSVs use 1-based labels, the library uses 0-based indices.
CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
NUM_CLASSES = len(CLASSES)
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
EXPECTED_LAYOUT = (
    "expected DFEW layout:\n"
    "  ROOT/Clip/original/<id>.mp4 (and/or face frames ROOT/Clip/clip_224x224[_16f]/<id>/1.jpg ...)\n"
    f"  ROOT/{SPLIT_DIRNAME}/{TRAIN_DIR}/set_1.csv .. set_5.csv\n"
    f"  ROOT/{SPLIT_DIRNAME}/{TEST_DIR}/set_1.csv .. set_5.csv\n"
    "(CSV columns video_name,label; labels 1..7). Use --splits-dir if the split files live elsewhere."
)


def normalise_clip_id(raw: object, source: str) -> int:
    """'00042', '42', 42 and '42.mp4' all mean clip 42."""
    text = str(raw).strip()
    stem = Path(text).stem if Path(text).suffix.lower() in VIDEO_SUFFIXES else text
    if not is_clip_number(stem):
        raise DatasetError(f"{source}: clip name '{raw}' is not a DFEW clip number")
    return int(stem)


def read_split_csv(path: Path) -> pd.DataFrame:
    """Read one split CSV into a frame indexed by clip id with a 0-based `label` column."""
    if not path.is_file():
        raise DatasetError(f"missing split file {path}\n{EXPECTED_LAYOUT}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(n, [f.strip() for f in row]) for n, row in enumerate(csv.reader(handle), start=1)
                    if any(f.strip() for f in row)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: not a readable CSV ({err})") from err
    if not rows:
        raise DatasetError(f"{path}: not a readable CSV (empty file)")
    columns = rows[0][1]
    if columns[:2] != ["video_name", "label"]:
        raise DatasetError(f"{path}: columns are {columns}, expected video_name,label")
    rows = [(n, fields + [""] * (2 - len(fields))) for n, fields in rows[1:]]
    ids = clip_ids(path, [n for n, _ in rows], [fields[0] for _, fields in rows], normalise_clip_id)
    bad = [(n, fields) for n, fields in rows if not (is_clip_number(fields[1]) and 1 <= int(fields[1]) <= NUM_CLASSES)]
    if bad:
        raise bad_lines(path, f"labels outside 1..{NUM_CLASSES}", [n for n, _ in bad], [f"{f[0]},{f[1]}" for _, f in bad],
                        f"DFEW's labels are 1..{NUM_CLASSES} ({', '.join(CLASSES)})")
    return split_frame(path, [n for n, _ in rows], ids, [int(fields[1]) - 1 for _, fields in rows])


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


def fold_summary(folds: list[Fold], clip_files: dict[int, Path] | None,
                 face_frames: dict[str, dict[int, Path]] | None = None) -> pd.DataFrame:
    """Per fold and split: clip counts, class distribution, how many have a video file (`with_video`)
    and how many have face frames in each of `face_frames` (`with_<source>`)."""
    return base.fold_summary(folds, CLASSES, clip_files, face_frames)


def unique_clips(folds: list[Fold]) -> pd.Index:
    return base.unique_clips(folds)


def _store_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_axis(frame.index.map(str))


class Dfew(Dataset):
    """The DFEW protocol over the functions above, with store ids str(int)."""

    name = "dfew"
    title = "DFEW"
    classes = CLASSES
    folds = FOLDS
    clip_dir = str(CLIP_DIR)
    face_sources = FACE_SOURCES
    split_folder = SPLIT_DIRNAME
    layout = EXPECTED_LAYOUT

    def splits_base(self) -> Path:
        return splits_dir_for(self.root, self.splits_dir)

    def split_path(self, k: int, part: str) -> Path:
        return Path(TRAIN_DIR if part == "train" else TEST_DIR) / f"set_{k}.csv"

    def read_split(self, path: Path) -> pd.DataFrame:
        return _store_ids(read_split_csv(path))

    def fold(self, k: int) -> Fold:
        fold = load_fold(k, self.root, self.splits_dir)
        return Fold(k, _store_ids(fold.train), _store_ids(fold.test))

    def clip_id(self, raw: object, where: str) -> str:
        return str(normalise_clip_id(raw, where))

    def format_split(self, rows: Sequence[tuple[str, int]]) -> str:
        return "video_name,label\n" + "".join(f"{name},{label + 1}\n" for name, label in rows)

    def synth_clip(self, number: int, label: int) -> SynthClip:
        name = f"{number:05d}"
        return SynthClip(name, CLIP_DIR / f"{name}.mp4", Path(name))
