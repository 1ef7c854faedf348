"""Extraction runs: list the clips, skip finished ones, extract in worker processes, keep the manifest.

Each worker process holds one ClipExtractor (its own MediaPipe instances) and writes each clip's
arrays and record atomically into the store, so a kill or Ctrl-C loses at most the clips in
flight and a re-run resumes where it stopped. `--shard i/n` assigns clips by a hash of their id,
so shards on many machines cover every clip exactly once, whatever order the files are listed in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import signal
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from dfew_mm.data.dfew import CLIP_DIR, VIDEO_SUFFIXES, index_clip_files, normalise_clip_id
from dfew_mm.data.store import FeatureStore, atomic_write_bytes
from dfew_mm.errors import DatasetError, StoreError
from dfew_mm.extract.worker import ClipExtractor, ExtractOptions, resolve_models

log = logging.getLogger(__name__)

SETTINGS_FILE = "extract_settings.json"


# -- which clips -------------------------------------------------------------------------------
def list_clips(dfew_root: Path | None = None, clips_dir: Path | None = None) -> dict[str, Path]:
    """clip id -> video file. DFEW ids are str(int) ("42"); other folders use the file stem."""
    if (dfew_root is None) == (clips_dir is None):
        raise DatasetError("give exactly one of --dfew-root or --clips-dir")
    if dfew_root is not None:
        return {str(clip_id): path for clip_id, path in index_clip_files(Path(dfew_root) / CLIP_DIR).items()}
    folder = Path(clips_dir)
    if not folder.is_dir():
        raise DatasetError(f"clip folder {folder} does not exist")
    clips: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            if path.stem in clips:
                raise DatasetError(f"{folder}: two videos share the id '{path.stem}' "
                                   f"({clips[path.stem].name}, {path.name}); rename one")
            clips[path.stem] = path
    return clips


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


def select_clips(clips: dict[str, Path], ids: Sequence[str] | None = None, shard: tuple[int, int] | None = None,
                 limit: int | None = None, dfew_ids: bool = False) -> list[tuple[str, Path]]:
    """Filter by --ids, then --shard, then --limit; in natural id order."""
    if ids:
        wanted = [str(normalise_clip_id(i, "--ids")) if dfew_ids else str(i) for i in ids]
        missing = [i for i in wanted if i not in clips]
        if missing:
            raise DatasetError(f"{len(missing)} requested clip ids have no video file "
                               f"(e.g. {', '.join(missing[:5])})")
        selected = list(dict.fromkeys(wanted))
    else:
        selected = sorted(clips, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    if shard is not None:
        selected = [i for i in selected if in_shard(i, *shard)]
    if limit is not None:
        selected = selected[:limit]
    return [(i, clips[i]) for i in selected]


# -- settings stored with the features -----------------------------------------------------------
def check_settings(store: FeatureStore, options: ExtractOptions, overwrite: bool) -> None:
    """Refuse to mix clips extracted with different settings in one store."""
    path = store.path / SETTINGS_FILE
    current = options.to_dict()
    if path.is_file() and not overwrite:
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: store {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise StoreError(f"{store.path} was extracted with other settings ({shown}); "
                             "use another --out, the same settings, or --overwrite to redo all clips")
    payload = json.dumps(current, indent=2).encode()
    atomic_write_bytes(path, lambda f: f.write(payload))


def remove_stale_temp_files(store: FeatureStore, clip_ids: Iterable[str]) -> int:
    """Delete temporary files left by a killed run for the clips this run owns."""
    removed = 0
    for clip_id in clip_ids:
        for folder, suffix in ((store.clips_dir, ".npz"), (store.records_dir, ".json")):
            for tmp in folder.glob(f".{clip_id}{suffix}.*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


# -- worker processes ----------------------------------------------------------------------------
_EXTRACTOR: ClipExtractor | None = None
_STORE: FeatureStore | None = None


def _init_worker(options: ExtractOptions, model_paths: dict[str, Path], store_path: Path, log_level: int) -> None:
    global _EXTRACTOR, _STORE
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
                        datefmt="%H:%M:%S")  # spawned processes do not inherit the parent's logging setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    # pool.terminate() sends SIGTERM: raising unwinds atomic writes, which delete their temp file.
    signal.signal(signal.SIGTERM, _raise_exit)
    limit_threads()
    _EXTRACTOR = ClipExtractor(options, model_paths)
    _STORE = FeatureStore(store_path)


def limit_threads() -> tuple[int, int]:
    """One core per worker process: no oversubscription from torch or OpenCV thread pools.

    OpenCV's pool also costs memory: with 2 threads, a worker's peak resident set was ~0.25 GB higher
    after 21 DFEW sample clips. Returns the previous (torch, OpenCV) thread counts.
    """
    import cv2
    import torch

    previous = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    return previous


@contextlib.contextmanager
def single_threaded():
    """limit_threads() for an extraction inside the caller's process, then the caller's settings back."""
    import cv2
    import torch

    torch_threads, cv2_threads = limit_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _process(item: tuple[str, Path]) -> dict:
    clip_id, path = item
    record, arrays = _EXTRACTOR.extract(clip_id, path)
    try:
        if arrays is not None:
            _STORE.write_clip(clip_id, arrays)
        else:
            _STORE.clip_path(clip_id).unlink(missing_ok=True)  # a stale clip from an earlier run
        _STORE.write_record(record)  # last: a record with status ok means the clip file is complete
    except OSError as err:  # disk full, permissions: stop the run, finished clips stay valid
        raise StoreError(f"cannot write clip {clip_id} into {_STORE.path}: {err}; fix this and re-run "
                         "the same command to resume") from None
    return record


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


def run_extraction(clips: list[tuple[str, Path]], out: Path, options: ExtractOptions = ExtractOptions(),
                   workers: int = 1, assets_dir: Path | None = None, overwrite: bool = False,
                   progress: bool = True) -> RunSummary:
    """Extract `clips` into the store at `out`, resuming unless `overwrite`; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(out)
    check_settings(store, options, overwrite)
    model_paths = resolve_models(options, assets_dir)  # downloads happen here, once, not in workers
    remove_stale_temp_files(store, (clip_id for clip_id, _ in clips))

    summary = RunSummary(total=len(clips))
    todo = clips if overwrite else [(i, p) for i, p in clips if not store.is_done(i)]
    summary.skipped = len(clips) - len(todo)
    if summary.skipped:
        log.info("%d of %d clips already extracted in %s, skipping them", summary.skipped, len(clips), out)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="clip", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        for record in _records(todo, options, model_paths, out, workers):
            summary.add(record)
            bar.update(1)
            bar.set_postfix(ok=summary.ok, failed=summary.failed)
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: finished clips are kept; re-run the same command to resume")
    finally:
        bar.close()
        summary.elapsed_s = time.perf_counter() - start
        store.rebuild_manifest()
    return summary


def _records(todo: list[tuple[str, Path]], options: ExtractOptions, model_paths: dict[str, Path],
             out: Path, workers: int):
    """Yield one record per clip as clips finish; in-process for one worker, else a process pool."""
    if not todo:
        return
    workers = max(1, min(workers, len(todo)))
    if workers == 1:  # this process is the worker, with one core like a pool worker
        global _EXTRACTOR, _STORE
        with single_threaded():
            _EXTRACTOR, _STORE = ClipExtractor(options, model_paths), FeatureStore(out)
            try:
                for item in todo:
                    yield _process(item)
            finally:
                _EXTRACTOR.close()
                _EXTRACTOR = _STORE = None
        return
    # spawn: MediaPipe and decord hold threads that do not survive fork safely.
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker,
                                        initargs=(options, model_paths, out, logging.getLogger().getEffectiveLevel()))
    try:
        yield from pool.imap_unordered(_process, todo, chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
