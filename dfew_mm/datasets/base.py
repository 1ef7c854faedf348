"""The dataset protocol: all that dfew_mm knows about one dataset is one `Dataset` subclass.

A dataset is one file of this folder holding one `Dataset` subclass, plus its line in the registry
(`__init__.py`); nothing outside them names a class or a folder of a dataset. The class says, for
its name (`--dataset`, `data.dataset`):

    classes      class names in the dataset's own label order (the library's 0-based label indices)
    folds        the protocol: the folds of k-fold cross-validation, or (1,) for a fixed train/test split
    layout       where the original clips (`clip_dir`, with their audio) and the face frames the dataset
                 distributes (`face_sources`: face source name -> its FrameFolders, dfew_mm.datasets.frame_folders)
                 live under the root; `layout` describes it for error messages
    split files  where fold k's train and test lists are (`split_folder`, `split_path`) and how one is
                 read (`read_split`: clip id -> 0-based label; bad lines are errors naming file and line)
    ids          how a clip's name in a split file, a file name or a folder becomes its store id
                 (`clip_id`; store ids are strings that name files, so they hold no '/')
    synthetic    how `dfew_mm synth` names a clip (`synth_clip`) and writes a split file (`format_split`)

An instance is bound to one copy, `Dataset(root, splits_dir)` (`splits_dir` replaces the root's split
folder). Reading a copy needs pandas only (imported where used: `dfew_mm --help` reads this registry):
no torch, no model code.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from dfew_mm.constants import FACE_SOURCE_DETECT
from dfew_mm.datasets.frame_folders import FrameFolders, index_frame_folders
from dfew_mm.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PARTS = ("train", "test")  # the split files of a fold (validation is carved out of train when training)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".flv", ".mpg", ".mpeg", ".webm", ".gif", ".m4v")
SHOWN = 3  # offending lines quoted in an error message


@dataclass(frozen=True)
class Fold:
    """One fold of a protocol. Frames are indexed by clip id with a 0-based `label` column."""

    k: int
    train: pd.DataFrame  # clip id -> label (0-based), line (in its split file)
    test: pd.DataFrame


@dataclass(frozen=True)
class SynthClip:
    """Where `dfew_mm synth` puts one clip of a dataset's layout (paths relative to the root)."""

    name: str  # the clip as its split files list it
    video: Path | None  # original clip (H.264 + AAC), None for a dataset that ships none
    frames: Path | None  # the clip's frame folder inside each face source's folder, None where it ships none


# -- small helpers shared by the dataset files --------------------------------------------------
def is_clip_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() rejects or reads otherwise."""
    return text.isascii() and text.isdigit()


def natural_key(clip_id: object) -> tuple[int, int, str]:
    """Sort key of clip ids: numeric ids as numbers, before other ids as text."""
    text = str(clip_id)
    return (0, int(text), "") if is_clip_number(text) else (1, 0, text)


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


def bad_lines(path: Path, what: str, lines: Sequence[int], items: Sequence[str], fix: str = "") -> DatasetError:
    """'PATH: 2 labels outside 1..7 (line 3: 1,8; line 9: 4,0)' and what to do, in one line."""
    quoted = "; ".join(f"line {n}: {item}" for n, item in zip(lines[:SHOWN], items[:SHOWN]))
    more = f"; and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return DatasetError(f"{path}: {len(lines)} {what} ({quoted}{more}){'; ' + fix if fix else ''}")


def clip_ids(path: Path, lines: Sequence[int], names: Sequence[str], clip_id) -> list:
    """A split file's clip names -> ids by `clip_id(name, where)`; a name it refuses is an error naming the line."""
    ids = []
    for line, name in zip(lines, names):
        try:
            ids.append(clip_id(name, str(path)))
        except DatasetError as err:
            raise DatasetError(f"{err} (line {line})") from None
    return ids


def split_frame(path: Path, lines: Sequence[int], ids: Sequence[object], labels: Sequence[int]) -> pd.DataFrame:
    """A split file's rows as a frame indexed by clip id with a 0-based `label` and the `line` it is on; a clip
    listed twice is an error."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"clip_id": list(ids), "label": np.asarray(labels, dtype=np.int64),
                          "line": np.asarray(lines, dtype=np.int64)})
    twice = frame["clip_id"].duplicated(keep=False)
    if twice.any():
        dup = frame.loc[twice, "clip_id"]
        firsts = dup.drop_duplicates()
        shown = [f"{c} (lines {', '.join(str(lines[i]) for i in dup.index[dup == c])})" for c in firsts[:5]]
        raise DatasetError(f"{path}: {len(firsts)} clip ids listed twice (e.g. {'; '.join(shown)})")
    return frame.set_index("clip_id")


def read_fields(path: Path, sep: str | None) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line of a text split file; `sep` None splits on whitespace."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not a text split file ({err})") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err.strerror})") from None
    return [(n, [f.strip() for f in line.split(sep)]) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip()]


def class_indices(path: Path, title: str, classes: Sequence[str], lines: Sequence[int], names: Sequence[str],
                  ids: Sequence[str]) -> list[int]:
    """Class names as a split file writes them (any case) -> 0-based indices; unknown names are one error."""
    index = {c.lower(): i for i, c in enumerate(classes)}
    unknown = [k for k, name in enumerate(names) if name.lower() not in index]
    if unknown:
        raise bad_lines(path, f"unknown class name{'s' if len(unknown) > 1 else ''}", [lines[k] for k in unknown],
                        [f"{ids[k]} {names[k]!r}" for k in unknown], f"{title}'s classes are {', '.join(classes)}")
    return [index[name.lower()] for name in names]


# -- the protocol ---------------------------------------------------------------------------------
def read_name_class_split(path: Path, title: str, classes: Sequence[str], clip_id, line_form: str) -> pd.DataFrame:
    """A split file of whitespace-separated '<clip name> <class name>' lines (MAFW's and FERV39k's form)."""
    rows = read_fields(path, None)
    short = [(n, f) for n, f in rows if len(f) < 2]
    if short:
        raise bad_lines(path, "lines without a class", [n for n, _ in short], [" ".join(f) for _, f in short],
                        f"each line is '{line_form}'")
    lines = [n for n, _ in rows]
    ids = clip_ids(path, lines, [f[0] for _, f in rows], clip_id)
    labels = class_indices(path, title, classes, lines, [f[1] for _, f in rows], [f[0] for _, f in rows])
    return split_frame(path, lines, ids, labels)


class Dataset:
    """Base of every dataset; see the module docstring for the protocol."""

    name: ClassVar[str]
    title: ClassVar[str]  # as the dataset writes its own name, for messages
    classes: ClassVar[tuple[str, ...]]
    folds: ClassVar[tuple[int, ...]]
    clip_dir: ClassVar[str] = ""  # folder of original clips <id>.<ext> under the root; "": none distributed
    face_sources: ClassVar[dict[str, FrameFolders]] = {}  # the face frames it distributes, by `--face-source` name
    split_folder: ClassVar[str]  # where the split files live under the root (--splits-dir replaces it)
    layout: ClassVar[str]  # the expected layout, shown with errors about a copy

    def __init__(self, root: str | Path | None = None, splits_dir: str | Path | None = None):
        self.root = Path(root) if root else None
        self.splits_dir = Path(splits_dir) if splits_dir else None

    # -- the protocol's description ---------------------------------------------------------------
    @classmethod
    def protocol(cls) -> str:
        """'5-fold cross-validation' or 'a fixed train/test split'."""
        return f"{len(cls.folds)}-fold cross-validation" if len(cls.folds) > 1 else "a fixed train/test split"

    @classmethod
    def folds_text(cls) -> str:
        """'folds 1..5' or 'one fixed train/test split (fold 1)'."""
        if len(cls.folds) == 1:
            return f"one fixed train/test split (fold {cls.folds[0]})"
        if list(cls.folds) == list(range(cls.folds[0], cls.folds[-1] + 1)):
            return f"folds {cls.folds[0]}..{cls.folds[-1]}"
        return f"folds {', '.join(map(str, cls.folds))}"

    @classmethod
    def check_fold(cls, k: int) -> None:
        if k not in cls.folds:
            raise DatasetError(f"fold {k} does not exist: {cls.title} has {cls.folds_text()}")

    @classmethod
    def default_face_source(cls) -> str:
        """The project's detector on the original clips where the dataset ships them, else its first face frames."""
        return FACE_SOURCE_DETECT if cls.clip_dir or not cls.face_sources else next(iter(cls.face_sources))

    @classmethod
    def frames_of(cls, name: str) -> FrameFolders:
        """The face frames named `name`; DatasetError listing the dataset's face frames for any other name."""
        source = cls.face_source(name)
        if source is None:
            raise DatasetError(f"face source '{name}' detects faces in the original clips: it has no frame folders")
        return source

    @classmethod
    def face_source(cls, name: str) -> FrameFolders | None:
        """The face frames named `name`; None for `detect` (faces detected in the original clips)."""
        valid = [*([FACE_SOURCE_DETECT] if cls.clip_dir else []), *cls.face_sources]
        if name not in valid:
            raise DatasetError(f"unknown face source '{name}': choose one of {', '.join(valid)}")
        return cls.face_sources.get(name)

    # -- split files -------------------------------------------------------------------------------
    def split_path(self, k: int, part: str) -> Path:
        """The split file of fold `k`'s `part` (train | test), relative to the split folder."""
        raise NotImplementedError

    def read_split(self, path: Path) -> pd.DataFrame:
        """One split file -> frame indexed by clip id (str) with a 0-based `label`; DatasetError naming
        the file and lines for anything it cannot take."""
        raise NotImplementedError

    def format_split(self, rows: Sequence[tuple[str, int]]) -> str:
        """The text of a split file listing (clip name, 0-based label) rows (for `dfew_mm synth`)."""
        raise NotImplementedError

    def splits_base(self) -> Path:
        """The split folder: --splits-dir (the folder itself or its parent), else the root's."""
        if self.splits_dir is not None:
            base = self.splits_dir / self.split_folder if (self.splits_dir / self.split_folder).is_dir() \
                else self.splits_dir
        elif self.root is not None:
            base = self.root / self.split_folder
        else:
            raise DatasetError(f"give the {self.title} root (--root) or its split folder (--splits-dir)")
        if not base.is_dir():
            raise DatasetError(f"split folder {base} does not exist\n{self.layout}")
        return base

    def fold(self, k: int) -> Fold:
        self.check_fold(k)
        base = self.splits_base()
        paths = {part: base / self.split_path(k, part) for part in PARTS}
        frames = {}
        for part, path in paths.items():
            if not path.is_file():
                raise DatasetError(f"missing split file {path}\n{self.layout}")
            frames[part] = self.read_split(path)
        overlap = frames["train"].index.intersection(frames["test"].index)
        if len(overlap):
            raise DatasetError(
                f"fold {k}: {len(overlap)} clips are in both {paths['train'].name} (train) and "
                f"{paths['test'].name} (test), e.g. {', '.join(map(str, overlap[:5]))}; the split files are corrupt")
        return Fold(k, frames["train"], frames["test"])

    def load_folds(self, ks: Sequence[int] | None = None) -> list[Fold]:
        """The folds `ks` (default: all); in k-fold cross-validation every fold must list the same clips."""
        folds = [self.fold(k) for k in (ks or self.folds)]
        listed = {f.k: set(f.train.index) | set(f.test.index) for f in folds}
        everyone = set().union(*listed.values()) if listed else set()
        for fold in folds:
            absent = sorted(everyone - listed[fold.k], key=natural_key)
            if absent:
                where = next(f for f in folds if absent[0] in listed[f.k])
                part, frame = ("train", where.train) if absent[0] in where.train.index else ("test", where.test)
                raise DatasetError(
                    f"fold {fold.k}: {len(absent)} clips of other folds are in no split of fold {fold.k} "
                    f"(e.g. clip {absent[0]}, listed in {self.splits_base() / self.split_path(where.k, part)}, "
                    f"line {frame.at[absent[0], 'line']}); every fold of {self.title}'s {self.protocol()} lists the "
                    "same clips")
        return folds

    # -- clips and frames on disk ------------------------------------------------------------------
    def clip_id(self, raw: object, where: str) -> str:
        """A clip's name -> its store id: '00042', '42' and '42.mp4' all become '42'."""
        text = str(raw).strip()
        stem = Path(text).stem if Path(text).suffix.lower() in VIDEO_SUFFIXES else text
        if not is_clip_number(stem):
            raise DatasetError(f"{where}: clip name '{raw}' is not a {self.title} clip number")
        return str(int(stem))

    def clip_files(self) -> dict[str, Path]:
        """Clip id -> original clip file under `clip_dir`; {} for a dataset that ships none."""
        if not self.clip_dir:
            return {}
        if self.root is None:
            raise DatasetError(f"give the {self.title} root (--root) to find its clips")
        folder = self.root / self.clip_dir
        if not folder.is_dir():
            raise DatasetError(f"clip folder {folder} does not exist\n{self.layout}")
        index: dict[str, Path] = {}
        skipped: list[tuple[str, str]] = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            problem = video_file_problem(path)
            try:
                clip = self.clip_id(path.name, str(folder))
            except DatasetError:
                problem = "not named by a clip number"
            if problem:
                skipped.append((path.name, problem))
                continue
            if clip in index:
                raise DatasetError(f"{folder}: clip {clip} exists twice ({index[clip].name}, {path.name})")
            index[clip] = path
        warn_skipped(folder, skipped)
        return index

    def frame_folders(self, source: str) -> dict[str, Path]:
        """Clip id -> its folder of face frames in face source `source` ({} when the copy lacks that folder)."""
        folder = self.frames_of(source).folder
        if self.root is None:
            raise DatasetError(f"give the {self.title} root (--root) to find its face frames")

        def clip(name: str) -> str | None:
            try:
                return self.clip_id(name, "")
            except DatasetError:
                return None

        return index_frame_folders(self.root / folder, clip)  # type: ignore[return-value]

    def clip_sources(self) -> tuple[dict[str, Path] | None, dict[str, dict[str, Path]]]:
        """(clip id -> original clip, None without the clip folder; face source -> clip id -> frame folder, for
        the face frame folders this copy has). DatasetError when it has neither."""
        if self.root is None:
            raise DatasetError(f"give the {self.title} root (--root) to find its clips")
        frames = {name: self.frame_folders(name) for name, s in self.face_sources.items()
                  if (self.root / s.folder).is_dir()}
        if not self.clip_dir or not (self.root / self.clip_dir).is_dir():
            if not frames:
                what = (f"clip folder {self.root / self.clip_dir} does not exist, nor any face frame folder"
                        if self.clip_dir else f"no face frame folder under {self.root}")
                raise DatasetError(f"{what}\n{self.layout}")
            return None, frames
        return self.clip_files(), frames

    # -- synthetic copies (dfew_mm synth) ------------------------------------------------------------
    def synth_clip(self, number: int, label: int) -> SynthClip:
        """Name and files of synthetic clip `number` (1-based) of class `label` in this layout."""
        raise NotImplementedError


def fold_summary(folds: Sequence[Fold], classes: Sequence[str], clip_files: dict | None = None,
                 face_frames: dict[str, dict] | None = None) -> pd.DataFrame:
    """Per fold and split: clip counts, class distribution (`classes` order), how many have a video file
    (`with_video`) and how many have face frames in each face source of `face_frames` (`with_<source>`)."""
    import numpy as np
    import pandas as pd

    rows = []
    for fold in folds:
        for split, frame in (("train", fold.train), ("test", fold.test)):
            counts = np.bincount(frame["label"], minlength=len(classes))
            row = {"fold": fold.k, "split": split, "clips": len(frame)}
            row.update({name: int(c) for name, c in zip(classes, counts)})
            if clip_files is not None:
                row["with_video"] = int(frame.index.isin(list(clip_files)).sum())
            for name, folders in (face_frames or {}).items():
                row[f"with_{name}"] = int(frame.index.isin(list(folders)).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def unique_clips(folds: Sequence[Fold]) -> pd.Index:
    import pandas as pd

    return pd.Index(sorted(set().union(*(set(f.train.index) | set(f.test.index) for f in folds)), key=natural_key))
