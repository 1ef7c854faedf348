"""Keep the console readable: MediaPipe (LiteRT/glog) and decord's FFmpeg print from native code.

Their start-up chatter and per-file FFmpeg complaints go straight to file descriptor 2, so the
Python logging level cannot stop them. Failures still surface: as Python exceptions and as the
per-clip `error` in the manifest. With debug logging (`dfew_mm -v`) nothing is silenced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

log = logging.getLogger("dfew_mm.extract")


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the duration, unless debug logging is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_decoder_logs() -> None:
    """decord's bundled FFmpeg logs damaged files at its own level; the manifest records the reason."""
    if not log.isEnabledFor(logging.DEBUG):
        import decord.logging

        decord.logging.set_level(decord.logging.QUIET)
