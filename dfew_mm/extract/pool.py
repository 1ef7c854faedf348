"""Supervised extraction worker processes: a worker that dies or hangs costs one clip, not the run.

The parent starts N spawned processes (MediaPipe and decord hold threads that do not survive a
fork), hands each one clip at a time and waits on their result pipes and process sentinels
together, so it always knows which clip a worker holds. When a worker dies (a signal, an abort
in native code, the out-of-memory killer) or exceeds the per-clip time limit, that clip is
recorded as failed with the cause (the signal and the last lines the worker's native code wrote,
e.g. `std::bad_alloc`), the worker's temporary files are removed, a replacement starts and the
run goes on. A single worker runs the same way, so the parent survives its crash too.

Each worker writes its clips' arrays and records into the store itself; the parent writes only
the records of clips whose worker died.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Iterator, Sequence

from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import DfewMMError, StoreError, WriteError
from dfew_mm.files import remove_temp_files_of, write_error
from dfew_mm.extract.options import DEFAULT_CLIP_TIMEOUT_S, ExtractOptions

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # a worker loading its models
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
MAX_START_FAILURES = 3  # workers dying during start-up, in a row, before the run stops
NATIVE_TAIL_LINES = 3
# Test hook: "clip=fault,clip=fault" makes the worker fail on those clips, to exercise the
# supervision with real process deaths: bad_alloc (a real C++ allocation failure in native code,
# which aborts), abort, kill (SIGKILL, as the out-of-memory killer sends), hang.
FAULTS_ENV = "DFEW_MM_TEST_WORKER_FAULTS"


def limit_threads() -> None:
    """One core per worker process: no oversubscription from torch or OpenCV thread pools.

    OpenCV's pool also costs memory: with 2 threads, a worker's peak resident set was ~0.25 GB higher
    after 21 DFEW sample clips."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


# -- the worker process ----------------------------------------------------------------------
def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _worker_main(conn, log_path: str, options: ExtractOptions, model_paths: dict[str, Path], store_path: Path,
                 log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
                        datefmt="%H:%M:%S")  # spawned processes do not inherit the parent's logging setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    signal.signal(signal.SIGTERM, _raise_exit)  # unwinds atomic writes, which delete their temp file
    from dfew_mm.extract.native_logs import set_native_log
    from dfew_mm.extract.worker import ClipExtractor

    set_native_log(log_path)
    try:
        limit_threads()
        extractor = ClipExtractor(options, model_paths)
        store = FeatureStore(store_path)
    except Exception as err:  # a model file that does not load, a store that vanished
        # Leave without interpreter clean-up, where half-built MediaPipe objects would print tracebacks.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        conn.send(("init_failed", None, f"{type(err).__name__}: {err}"))
        os._exit(1)
    faults, code = _faults(), 0
    try:
        conn.send(("ready", None, os.getpid()))
        while True:
            item = conn.recv()
            if item is None:
                return
            clip_id, path = item
            _clear(log_path)  # what is left there when this worker dies belongs to this clip
            if clip_id in faults:
                _inject(faults[clip_id])
            try:
                try:
                    record = extract_one(extractor, store, clip_id, path)
                except WriteError:
                    raise
                except Exception as err:  # the extractor catches bad input; this is anything else
                    log.warning("clip %s (%s) failed: %s", clip_id, path, err, exc_info=True)
                    record = {"clip_id": clip_id, "status": "failed", "error": f"{type(err).__name__}: {err}"}
                    store.write_record(record)
            except WriteError as err:  # disk full, permissions: the run stops, finished clips stay valid
                conn.send(("fatal", clip_id, f"clip {clip_id}: {err}"))
                return
            conn.send(("done", clip_id, record))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone
    except SystemExit as stop:  # SIGTERM: the atomic write in flight has unwound
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception:  # a fault of the worker itself: the parent records the clip from the exit status
        log.exception("extraction worker failed")
        code = 1
    finally:
        _leave(extractor, code)


def _leave(extractor, code: int) -> None:
    """Close the models, then exit without interpreter clean-up: MediaPipe objects finalised during
    shutdown print tracebacks and native log lines into the user's terminal."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a stop request from here on ends the process at once
    try:
        extractor.close()
    finally:
        logging.shutdown()
        os._exit(code)


def extract_one(extractor, store: FeatureStore, clip_id: str, path) -> dict:
    """Extract one clip and write its arrays, then its record (last: an ok record means a complete file)."""
    record, arrays = extractor.extract(clip_id, path)
    if arrays is not None:
        record["npz_bytes"] = store.write_clip(clip_id, arrays)
    else:
        try:
            store.clip_path(clip_id).unlink(missing_ok=True)  # a stale clip from an earlier run
        except OSError as err:
            raise write_error(store.clip_path(clip_id), err) from None
    store.write_record(record)
    return record


def _clear(path: str) -> None:
    try:
        os.truncate(path, 0)
    except OSError:
        pass


def _faults() -> dict[str, str]:
    spec = os.environ.get(FAULTS_ENV, "")
    return dict(part.split("=", 1) for part in spec.split(",") if "=" in part)


def _inject(fault: str) -> None:
    from dfew_mm.extract.native_logs import native_stderr_silenced

    if fault == "bad_alloc":
        import ctypes

        new = ctypes.CDLL("libstdc++.so.6")._Znwm  # operator new(size_t)
        new.restype, new.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        with native_stderr_silenced():  # where decoding runs
            new(1 << 62)  # throws std::bad_alloc through C frames: terminate, abort
    elif fault == "abort":
        os.abort()
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "hang":
        time.sleep(1e6)


# -- the parent --------------------------------------------------------------------------------
@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: object
    log_path: str
    started: float
    ready: bool = False
    item: tuple[str, Path] | None = None  # the clip it holds
    since: float = 0.0  # when it got that clip

    @property
    def pid(self) -> int | None:
        return self.process.pid


def death_cause(exitcode: int | None) -> str:
    """'killed by SIGKILL', 'aborted (SIGABRT)', 'exited with status 3' ..."""
    if exitcode is None:
        return "stopped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        what = {"SIGKILL": "killed by SIGKILL (as the out-of-memory killer does)",
                "SIGABRT": "aborted (SIGABRT) in native code", "SIGSEGV": "crashed (SIGSEGV) in native code",
                "SIGBUS": "crashed (SIGBUS) in native code"}
        return what.get(name, f"killed by {name}")
    return f"exited with status {exitcode}"


def native_tail(path: str, lines: int = NATIVE_TAIL_LINES, limit: int = 300) -> str:
    """The last non-empty lines a worker's native code wrote, on one line."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not _CHATTER.match(line)][-lines:]
    return " | ".join(kept)[-limit:]


_CHATTER = re.compile(r"^\s*(INFO:|[IW]\d{4} )")  # TFLite and glog info/warning lines: not why a worker died


class SupervisedPool:
    """`run(items)` yields one manifest record per clip, as clips finish, from N worker processes."""

    def __init__(self, workers: int, options: ExtractOptions, model_paths: dict[str, Path], store_path: Path,
                 clip_timeout: float = DEFAULT_CLIP_TIMEOUT_S):
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        if not clip_timeout > 0:
            raise ValueError(f"the clip time limit must be positive (got {clip_timeout})")
        self.n, self.clip_timeout = workers, float(clip_timeout)
        self.args = (options, model_paths, Path(store_path), logging.getLogger().getEffectiveLevel())
        self.store = FeatureStore(store_path)
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        self.log_dir: tempfile.TemporaryDirectory | None = None
        self.start_failures = 0

    # -- worker life cycle
    def _start(self) -> _Worker:
        fd, log_path = tempfile.mkstemp(dir=self.log_dir.name, prefix="worker-", suffix=".log")
        os.close(fd)
        parent_end, child_end = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, args=(child_end, log_path, *self.args), daemon=True,
                                   name="dfew_mm-extract")
        process.start()
        child_end.close()
        worker = _Worker(process, parent_end, log_path, time.monotonic())
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        """Stop `worker` (SIGKILL if asked), reap it and remove what it left behind."""
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(STOP_GRACE_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        if worker.pid is not None:
            remove_temp_files_of(self.store.folders, worker.pid)
        Path(worker.log_path).unlink(missing_ok=True)
        self.workers.remove(worker)

    def _shutdown(self) -> None:
        """Idle workers stop at once; busy ones get SIGTERM (their atomic writes unwind), then SIGKILL."""
        for worker in self.workers:
            try:
                if worker.item is None and worker.ready:
                    worker.conn.send(None)
                else:
                    worker.process.terminate()
            except (OSError, ValueError):
                worker.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in list(self.workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            self._retire(worker, kill=True)

    # -- the loop
    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[dict]:
        pending = deque(items)
        if not pending:
            return
        self.log_dir = tempfile.TemporaryDirectory(prefix="dfew_mm_extract_")
        try:
            for _ in range(min(self.n, len(pending))):
                self._start()
            while pending or any(w.item is not None for w in self.workers):
                for worker in self.workers:
                    if worker.ready and worker.item is None and pending:
                        item = pending.popleft()
                        try:
                            worker.conn.send(item)  # (clip id, video Path or ClipFiles)
                        except OSError:  # it died while idle: the clip goes to another worker
                            pending.appendleft(item)
                            continue
                        worker.item, worker.since = item, time.monotonic()
                ready = wait([w.conn for w in self.workers] + [w.process.sentinel for w in self.workers],
                             timeout=self._next_deadline())
                for worker in list(self.workers):
                    record = self._poll(worker, ready)
                    if record is not None:
                        yield record
                        continue
                    record = self._check_alive(worker, ready, pending)
                    if record is not None:
                        yield record
            self._shutdown()
        finally:
            if self.workers:  # an exception or Ctrl-C: stop the workers, keep what is finished
                self._shutdown()
            self.log_dir.cleanup()

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [w.since + self.clip_timeout if w.item is not None else w.started + START_TIMEOUT_S
                     for w in self.workers if w.item is not None or not w.ready]
        return max(0.0, min(deadlines) - now) + 0.05 if deadlines else 1.0

    def _poll(self, worker: _Worker, ready: list) -> dict | None:
        """A message from `worker`, if one is waiting: its record, or None."""
        if worker.conn not in ready:
            return None
        try:
            kind, clip_id, payload = worker.conn.recv()
        except (EOFError, OSError):
            return None  # it died; _check_alive records it
        if kind == "ready":
            worker.ready = True
            self.start_failures = 0
            return None
        if kind == "init_failed":
            raise DfewMMError(f"an extraction worker could not start: {payload}")
        if kind == "fatal":
            raise StoreError(f"{payload}; then re-run the same command to resume (finished clips are kept)")
        worker.item = None
        return payload

    def _check_alive(self, worker: _Worker, ready: list, pending: deque) -> dict | None:
        """Handle a worker that died or ran past its time limit: the failed record of its clip, or None."""
        now = time.monotonic()
        timed_out = worker.item is not None and now - worker.since > self.clip_timeout
        start_hung = not worker.ready and now - worker.started > START_TIMEOUT_S
        dead = worker.process.sentinel in ready or not worker.process.is_alive()
        if not (dead or timed_out or start_hung):
            return None
        if dead:
            worker.process.join(STOP_GRACE_S)
            cause = death_cause(worker.process.exitcode)
        elif timed_out:
            cause = (f"timed out after {self.clip_timeout:g} s (--clip-timeout); the worker was stopped")
        else:
            cause = f"did not start within {START_TIMEOUT_S:g} s"
        tail = native_tail(worker.log_path) if dead else ""
        item = worker.item
        self._retire(worker, kill=True)
        if item is None:  # died (or hung) while starting or idle: no clip lost
            self.start_failures += 0 if worker.ready else 1
            if self.start_failures >= MAX_START_FAILURES:
                raise DfewMMError(f"extraction workers keep dying during start-up: {cause}"
                                  + (f": {tail}" if tail else ""))
            log.warning("an extraction worker %s%s", cause, f" ({tail})" if tail else "")
            if pending:
                self._start()
            return None
        clip_id, path = item
        reason = f"worker process {cause}" + (f": {tail}" if tail else "")
        if "bad_alloc" in tail or "SIGKILL" in cause or "MemoryError" in tail:
            reason += "; if memory ran out: use fewer --workers, fewer --frames or more memory"
        log.warning("clip %s (%s): %s", clip_id, path, reason)
        record = {"clip_id": clip_id, "status": "failed", "error": reason,
                  "extract_s": round(time.monotonic() - worker.since, 3)}
        try:
            self.store.clip_path(clip_id).unlink(missing_ok=True)  # as for any failed clip
            self.store.write_record(record)
        except OSError as err:
            raise StoreError(f"clip {clip_id}: {write_error(self.store.record_path(clip_id), err)}; then re-run "
                             "the same command to resume (finished clips are kept)") from None
        except WriteError as err:
            raise StoreError(f"clip {clip_id}: {err}; then re-run the same command to resume "
                             "(finished clips are kept)") from None
        if pending:
            self._start()
        return record
