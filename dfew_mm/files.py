"""Files that are whole or absent: atomic writes, one-line write errors, clean-up of temporary files.

Every write goes through a temporary file in the target's folder, named after its writer
(`.{name}.{host}-{pid}.{random}.tmp`), that is renamed into place: a crash, a kill or a full disk
never leaves a half-written file under the final name, and clean-up can tell the temporary files
of dead writers (removed) from those of live ones (kept), also when several runs or hosts share
a folder.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterable

from dfew_mm.errors import WriteError

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
# Stores live on shared filesystems: a pid only means something on the host that wrote it.
HOST_TAG = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
STALE_TEMP_AGE_S = 24 * 3600  # a temporary file untouched this long has no live writer, whoever wrote it
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def temp_prefix(path: Path, pid: int | None = None) -> str:
    """`.{name}.{host}-{pid}.`: the start of every temporary file that becomes `path`."""
    return f".{path.name}.{HOST_TAG}-{os.getpid() if pid is None else pid}."


def write_error(path: Path, err: OSError) -> WriteError:
    """One line naming the file, the cause and what to do."""
    reason = err.strerror or str(err)
    if err.errno in _FULL:
        hint = "free disk space or write to another folder"
    elif err.errno == errno.EFBIG:
        hint = "a file size limit was reached (ulimit -f or the filesystem's): write to another folder"
    elif err.errno in _DENIED:
        hint = "check the folder's permissions or write to another folder"
    else:
        hint = "check the disk and the folder"
    kept = "; the previous version of the file is unchanged" if path.exists() else ""
    return WriteError(f"cannot write {path}: {reason} ({hint}){kept}")


class _RecordingWriter:
    """A file proxy that keeps the first OSError of a write: torch.save turns it into an opaque
    RuntimeError ('unexpected pos'), and the cause is what the user needs to see."""

    def __init__(self, handle):
        self._handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def _open_temp(fd: int):
    return os.fdopen(fd, "wb")


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written files.

    `write(handle)` writes the content. Disk-full and permission errors become one WriteError
    naming `path`; the temporary file is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    recorder = None
    try:
        with _open_temp(fd) as handle:
            recorder = _RecordingWriter(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; stores are shared on clusters
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else recorder.error if recorder is not None else None
        if cause is not None and isinstance(err, (OSError, RuntimeError)):
            raise write_error(path, cause) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    payload = text.encode()
    atomic_write_bytes(path, lambda f: f.write(payload))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def temp_owner_alive(name: str, mtime: float, now: float | None = None) -> bool:
    """Whether the writer of temporary file `name` may still be writing it.

    Names without host and pid come from older versions and have no live writer. A pid of another
    host cannot be checked from here: such files count as live until untouched for a day. Our own
    pid counts as dead: clean-up runs before this process writes anything.
    """
    match = _TEMP_NAME.match(name)
    if match is None:
        return False
    if (now if now is not None else time.time()) - mtime > STALE_TEMP_AGE_S:
        return False
    if match["host"] != HOST_TAG:
        return True
    pid = int(match["pid"])
    return pid != os.getpid() and _pid_alive(pid)


def remove_stale_temp_files(folders: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Delete the temporary files in `folders` whose writer is dead: (removed, kept as live)."""
    removed, kept = [], []
    now = time.time()
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            log.warning("cannot list %s to clear temporary files: %s", folder, err.strerror)
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                alive = temp_owner_alive(entry.name, entry.stat(follow_symlinks=False).st_mtime, now)
                if not alive:
                    os.unlink(entry.path)
            except FileNotFoundError:  # its writer finished or cleared it meanwhile
                continue
            except OSError as err:
                log.warning("cannot remove the temporary file %s: %s", entry.path, err.strerror)
                alive = True
            (kept if alive else removed).append(Path(entry.path))
    if kept:
        log.info("left %d temporary files of live writers in place (e.g. %s)", len(kept), kept[0])
    return removed, kept


def remove_temp_files_of(folders: Iterable[Path], pid: int) -> list[Path]:
    """Delete the temporary files that process `pid` of this host left in `folders` (it is dead)."""
    removed = []
    marker = f".{HOST_TAG}-{pid}."
    for folder in folders:
        for path in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else ():
            if marker in path.name and (m := _TEMP_NAME.match(path.name)) and m["pid"] == str(pid):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
