"""Keep the console readable: MediaPipe (LiteRT/glog) and decord's FFmpeg print from native code.

Their start-up chatter and per-file FFmpeg complaints go straight to file descriptor 2, so the
Python logging level cannot stop them. Failures still surface: as Python exceptions and as the
per-clip `error` in the manifest. With debug logging (`dfew_mm -v`) nothing is silenced.
Extraction worker processes send the silenced output to a log file of their own instead of
/dev/null (`set_native_log`), so that the last words of a worker that dies in native code (e.g.
`std::bad_alloc`) can be quoted by the process that supervises it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("dfew_mm.extract")
_SINK = os.devnull  # where silenced native output goes in this process


def set_native_log(path: str | os.PathLike | None) -> None:
    """Send silenced native output to `path` (appended) instead of /dev/null; None restores /dev/null."""
    global _SINK
    _SINK = os.fspath(path) if path is not None else os.devnull


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null (or the native log) for the duration, unless debug logging is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    sink = os.open(_SINK, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


def quiet_decoder_logs() -> None:
    """decord's bundled FFmpeg logs damaged files at its own level; the manifest records the reason."""
    if not log.isEnabledFor(logging.DEBUG):
        import decord.logging

        decord.logging.set_level(decord.logging.QUIET)
