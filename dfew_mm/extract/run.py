"""Extraction runs: list the clips, skip finished ones, extract in worker processes, keep the manifest.

A dataset's clips come from its file (dfew_mm.datasets): the original clips, or with a face source
other than `detect` the folders of face frames the dataset distributes (frames-only clips: faces,
no pose or audio; see dfew_mm.extract.frames).

Each worker process holds one ClipExtractor (its own MediaPipe instances) and writes each clip's
arrays and record atomically into the store, so a kill or Ctrl-C loses at most the clips in
flight and a re-run resumes where it stopped; a clip counts as finished only if its file is
intact. Workers are supervised (dfew_mm.extract.pool): one that dies or hangs fails its clip,
not the run. `--shard i/n` assigns clips by a hash of their id, so shards on many machines cover
every clip exactly once, whatever order the files are listed in.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from dfew_mm.constants import FACE_SOURCE_DETECT
from dfew_mm.data.store import EXTRACTOR_VERSION, STORE_FORMAT, FeatureStore
from dfew_mm.datasets import open_dataset
from dfew_mm.datasets.base import (VIDEO_SUFFIXES, Dataset, is_clip_number, natural_key, video_file_problem,
                                   warn_skipped)
from dfew_mm.errors import DatasetError, StoreError, WriteError
from dfew_mm.files import remove_stale_temp_files
from dfew_mm.extract.assets import resolve_model
from dfew_mm.extract.face_frames import ClipFiles
from dfew_mm.extract.options import ABSENT_SETTINGS, DEFAULT_CLIP_TIMEOUT_S, ExtractOptions
from dfew_mm.extract.pool import SupervisedPool

log = logging.getLogger(__name__)

SPLITS = ("train", "test")  # the split files of a fold (validation is carved out at training time)


# -- which clips -------------------------------------------------------------------------------
def list_clips(dfew_root: Path | None = None, clips_dir: Path | None = None, face_source_name: str = FACE_SOURCE_DETECT,
               dataset: Dataset | None = None) -> dict[str, Path | ClipFiles]:
    """clip id -> video file, or its `ClipFiles` under a face frame source, for a `dataset` copy (DFEW's at
    `dfew_root`) or any folder of videos (`clips_dir`). A dataset's ids are its store ids (DFEW's str(int),
    "42"); other folders use the file stem."""
    if sum(x is not None for x in (dfew_root, clips_dir, dataset)) != 1:
        raise DatasetError("give exactly one of --root, --dfew-root or --clips-dir")
    if dfew_root is not None:
        dataset = open_dataset("dfew", dfew_root)
    if dataset is not None:
        if dataset.face_source(face_source_name) is not None:
            return frame_source_clips(dataset, face_source_name)
        return original_clips(dataset)
    if face_source_name != FACE_SOURCE_DETECT:
        raise DatasetError(f"--face-source {face_source_name} reads a dataset's face frame folders: give "
                           "--dfew-root or --root (a --clips-dir extraction detects the faces itself)")
    folder = Path(clips_dir)
    if not folder.is_dir():
        raise DatasetError(f"clip folder {folder} does not exist")
    clips: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        problem = video_file_problem(path)
        if problem:
            skipped.append((path.name, problem))
            continue
        if path.stem in clips:
            raise DatasetError(f"{folder}: two videos share the id '{path.stem}' "
                               f"({clips[path.stem].name}, {path.name}); rename one")
        clips[path.stem] = path
    warn_skipped(folder, skipped)
    return clips


def original_clips(dataset: Dataset) -> dict[str, Path]:
    """clip id -> original video of a dataset copy; a copy without them says which face source to use."""
    have = [s.name for s in dataset.face_sources.values() if (dataset.root / s.folder).is_dir()]
    if not dataset.clip_dir or not (dataset.root / dataset.clip_dir).is_dir():
        if have:
            missing = (f"clip folder {dataset.root / dataset.clip_dir} does not exist" if dataset.clip_dir
                       else f"{dataset.title} distributes no original clips")
            raise DatasetError(f"{missing}, so faces cannot be detected; this copy has {dataset.title}'s face frames: "
                               f"use --face-source {' or '.join(have)}")
    return dataset.clip_files()


def frame_source_clips(dataset: Dataset, name: str) -> dict[str, Path | ClipFiles]:
    """clip id -> `ClipFiles` for every clip with a frame folder of face source `name`, an original, or a
    line in the split files (a clip with neither gets a failed record saying so)."""
    source = dataset.frames_of(name)
    folder = dataset.root / source.folder
    if not folder.is_dir():
        raise DatasetError(f"face frame folder {folder} does not exist (--face-source {name}); {dataset.title} "
                           f"distributes it with the clips, e.g. {source.folder}/<clip>/1.jpg ...")
    frames = dataset.frame_folders(name)
    originals = dataset.root / dataset.clip_dir if dataset.clip_dir else None
    videos = dataset.clip_files() if originals is not None and originals.is_dir() else {}
    try:
        listed = {i for fold in dataset.load_folds() for i in (*fold.train.index, *fold.test.index)}
    except DatasetError as err:  # a copy without (valid) split files still extracts; `folds` and `train` say why
        log.debug("no split files to list clips from: %s", err)
        listed = set()
    absent = (f"neither an original clip in {originals} nor face frames in {folder}" if originals is not None
              else f"no face frames in {folder}")
    return {i: ClipFiles(videos.get(i), frames.get(i), source, absent)
            for i in sorted(set(frames) | set(videos) | listed, key=natural_key)}


def parse_shard(text: str) -> tuple[int, int]:
    """'0/4' -> (0, 4); shards are numbered 0..n-1."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard '{text}' should look like i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard '{text}': need 0 <= i < n")
    return index, count


def in_shard(clip_id: str, index: int, count: int) -> bool:
    return zlib.crc32(clip_id.encode()) % count == index


def split_clip_ids(fold: int, split: str, dfew_root: Path | None = None, splits_dir: Path | None = None,
                   dataset: Dataset | None = None) -> list[str]:
    """Store ids of one fold's `train` or `test` split, from the split files of `dataset` (default DFEW's
    at `dfew_root` / `splits_dir`)."""
    if split not in SPLITS:
        raise DatasetError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    dataset = dataset or open_dataset("dfew", dfew_root, splits_dir)
    return [str(i) for i in getattr(dataset.fold(fold), split).index]


def select_clips(clips: dict[str, Path], ids: Sequence[str] | None = None, shard: tuple[int, int] | None = None,
                 limit: int | None = None, dfew_ids: bool = False, split_ids: Sequence[str] | None = None,
                 split_name: str = "the split", dataset: Dataset | None = None) -> list[tuple[str, Path]]:
    """Filter by --ids (normalised as `dataset`'s ids, or DFEW's with `dfew_ids`), then by a fold's split
    (`split_ids`, store ids), then --shard, then --limit; in natural id order (the order of --ids when given)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    dataset = dataset or (open_dataset("dfew") if dfew_ids else None)
    if ids:
        wanted = [dataset.clip_id(i, "--ids") if dataset is not None else str(i) for i in ids]
        missing = [i for i in wanted if i not in clips]
        if missing:
            raise DatasetError(f"{len(missing)} requested clip ids have no video file "
                               f"(e.g. {', '.join(missing[:5])})")
        selected = list(dict.fromkeys(wanted))
    else:
        selected = sorted(clips, key=natural_key)
    if split_ids is not None:
        selected = _in_split(clips, selected, split_ids, split_name, from_ids=bool(ids))
    if shard is not None:
        selected = [i for i in selected if in_shard(i, *shard)]
    if limit is not None:
        selected = selected[:limit]
    return [(i, clips[i]) for i in selected]


def _in_split(clips: dict[str, Path], selected: list[str], split_ids: Sequence[str], split_name: str,
              from_ids: bool) -> list[str]:
    """The `selected` clips whose id is in `split_ids`; a folder's file stems count as clip numbers (video
    files named 42 or 00042 alike)."""
    def number(clip_id: str) -> str | None:
        return str(int(clip_id)) if is_clip_number(clip_id) else clip_id

    wanted = {str(i) for i in split_ids}
    kept = [c for c in selected if number(c) in wanted]
    if from_ids and len(kept) < len(selected):
        outside = [c for c in selected if number(c) not in wanted]
        log.warning("%d of the --ids clips are not in %s and are left out (e.g. %s)", len(outside), split_name,
                    ", ".join(outside[:5]))
    elif not from_ids:
        have = {number(c) for c in clips}
        absent = [i for i in split_ids if i not in have]
        if absent:
            log.warning("%d of the %d clips of %s have no video file (e.g. %s); extracting the %d that do",
                        len(absent), len(split_ids), split_name, ", ".join(absent[:5]), len(split_ids) - len(absent))
    return kept


# -- settings stored with the features -----------------------------------------------------------
def check_settings(store: FeatureStore, options: ExtractOptions, overwrite: bool) -> None:
    """Refuse to mix clips extracted with different settings in one store."""
    path = store.settings_path
    current = {**options.to_dict(), "store_format": STORE_FORMAT, "extractor_version": EXTRACTOR_VERSION}
    if path.is_file() and not overwrite:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} cannot be read ({err}); if the store was extracted with the current "
                             "settings, delete that file and re-run, else use --overwrite to redo all clips") from None
        saved = {**ABSENT_SETTINGS, **saved}  # stores written before a setting existed used its neutral value
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: store {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            advice = "use another --out, the same settings, or --overwrite to redo all clips"
            if "store_format" in diff:  # clips of two formats in one store: bring the old ones up first
                advice = (f"the store is of format {saved['store_format']}, without the waveform array: first "
                          f"run `python preprocess/extract.py --add-waveform --out {store.path} "
                          "--dfew-root ROOT` (or --clips-dir DIR), which adds it without redoing faces and pose")
            if "extractor_version" in diff:  # one store, one extractor: the old clips are redone, not mixed in
                advice = (f"its clips come from extractor version {saved['extractor_version']} and this is version "
                          f"{EXTRACTOR_VERSION} (docs/reproducibility.md says what changed); re-extract all of them "
                          "with --overwrite, or into another --out")
            elif "face_source" in diff:  # faces cut by two sources in one store would look like one
                advice = (f"each face source needs its own store: use another --out for --face-source "
                          f"{options.face_source} (or --overwrite to redo all clips)")
            elif "darken" in diff:  # darkening a store's clips again, or mixing two strengths in one store
                advice = (f"each darkening strength needs its own store: use another --out for --darken "
                          f"{options.darken:g} (or --overwrite to redo all clips)")
            raise StoreError(f"{store.path} was extracted with other settings ({shown}); {advice}")
    store.write_settings(current)


# -- the run -------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    total: int = 0  # clips selected for this run
    skipped: int = 0  # already finished in the store
    ok: int = 0
    failed: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    face_rates: list[float] = field(default_factory=list)
    pose_rates: list[float] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (clip_id, reason)

    def add(self, record: dict) -> None:
        if record["status"] == "ok":
            self.ok += 1
            self.face_rates.append(record["face_rate"])
            self.pose_rates.append(record["pose_rate"])
        else:
            self.failed += 1
            self.failures.append((record["clip_id"], record["error"]))

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    def lines(self) -> list[str]:
        rate = self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0
        out = [f"{'interrupted' if self.interrupted else 'done'}: {self.ok} ok, {self.failed} failed, "
               f"{self.skipped} already done, {self.total - self.skipped - self.processed} not reached "
               f"({self.total} selected) in {self.elapsed_s:.1f} s ({rate:.2f} clips/s)"]
        if self.ok:
            out.append(f"mean face rate {np.mean(self.face_rates):.3f}, mean pose rate {np.mean(self.pose_rates):.3f}")
        out += [f"failed {clip_id}: {reason}" for clip_id, reason in self.failures[:10]]
        if len(self.failures) > 10:
            out.append(f"... and {len(self.failures) - 10} more failures (see manifest.csv)")
        return out

    def succeeded(self) -> bool:
        """Exit status 0 unless no clip succeeded (finished clips from earlier runs count)."""
        return self.ok + self.skipped > 0


def resolve_models(options: ExtractOptions, assets_dir: str | Path | None) -> dict[str, Path]:
    """Model key -> verified local file, downloading into the cache where needed (parent process)."""
    return {key: resolve_model(key, assets_dir) for key in options.model_keys()}


def run_extraction(clips: list[tuple[str, Path | ClipFiles]], out: Path, options: ExtractOptions = ExtractOptions(),
                   workers: int = 1, assets_dir: Path | None = None, overwrite: bool = False,
                   progress: bool = True, clip_timeout: float = DEFAULT_CLIP_TIMEOUT_S) -> RunSummary:
    """Extract `clips` into the store at `out`, resuming unless `overwrite`; returns a summary.

    Each clip gets at most `clip_timeout` seconds; a clip whose worker dies or runs longer is
    recorded as failed with the cause and the run goes on with a new worker.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    listed_for = {path.source.name if isinstance(path, ClipFiles) else FACE_SOURCE_DETECT for _, path in clips}
    if listed_for - {options.face_source}:
        raise DatasetError(f"face source {options.face_source}: list the clips with list_clips(..., face_source_name="
                           f"{options.face_source!r}) (video files for detect, ClipFiles for a face frame folder)")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the feature store {out}: {err.strerror}") from None
    store = FeatureStore(out)
    check_settings(store, options, overwrite)
    if options.darken > 0:
        log.info("scene-level low light: frames darkened at strength %g (noise seed %d) before detection",
                 options.darken, options.darken_seed)
    model_paths = resolve_models(options, assets_dir)  # downloads happen here, once, not in workers
    removed, _ = remove_stale_temp_files(store.folders)  # only those of dead writers: runs may share a store
    if removed:
        log.info("removed %d temporary files left by killed runs in %s", len(removed), out)
    stale = store.refresh_manifest()
    if stale:
        log.info("rebuilt %s: it disagreed with the records (%s)", store.manifest_path, stale)

    summary = RunSummary(total=len(clips))
    todo = clips if overwrite else [(i, p) for i, p in clips if not store.is_done(i)]
    summary.skipped = len(clips) - len(todo)
    if summary.skipped:
        log.info("%d of %d clips already extracted in %s, skipping them", summary.skipped, len(clips), out)
    start = time.perf_counter()
    # disable=None: a bar only on a terminal, never thousands of carriage returns in a log file
    bar = tqdm(total=len(todo), unit="clip", desc="extract", disable=None if progress else True, dynamic_ncols=True)
    pool = SupervisedPool(workers, options, model_paths, out, clip_timeout)
    records = pool.run(todo)
    ok = False
    try:
        for record in records:
            summary.add(record)
            bar.update(1)
            bar.set_postfix(ok=summary.ok, failed=summary.failed)
        ok = True
    except KeyboardInterrupt:
        summary.interrupted = ok = True
        log.warning("interrupted: finished clips are kept; re-run the same command to resume")
    finally:
        records.close()  # stops the workers if the loop ended early
        bar.close()
        summary.elapsed_s = time.perf_counter() - start
        _final_manifest(store, raise_errors=ok)
    return summary


def _final_manifest(store: FeatureStore, raise_errors: bool) -> None:
    """Rebuild manifest.csv at the end; when the run already failed, a second error must not hide the first."""
    try:
        store.rebuild_manifest()
    except WriteError as err:
        if raise_errors:
            raise StoreError(f"{err}; the clips are extracted: re-run the same command once there is space, "
                             "it rebuilds the manifest") from None
        log.warning("could not rebuild the manifest either: %s", err)
