"""Atomic file writes: a temporary in one hidden folder beside the target, renamed over it.

A reader never sees a half-written file, and a crash leaves the previous file intact. Every
temporary lives in ``FOLDER/.brainsegfounder/tmp-PID-HOST-XXXXXXXX/``: one place, removed when
the write ends, and removed by the next write to that folder if a killed process left it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .errors import UserError

STATE_DIR = ".brainsegfounder"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# A writer in C++ (ITK) reports a full disk as RuntimeError; less free space than this then means full.
NEARLY_FULL_BYTES = 16 * 2**20
_STAGE = re.compile(r"^tmp-(\d+)-(.+)-[a-z0-9_]{8}$")
_STALE_ELSEWHERE_S = 7 * 24 * 3600  # a folder shared by machines: another host's pids cannot be checked


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def clean_stale(folder: os.PathLike) -> None:
    """Remove temporaries that killed processes left in ``folder``'s staging area."""
    state = Path(folder) / STATE_DIR
    if not state.is_dir():
        return
    host = socket.gethostname()
    for entry in state.glob("tmp-*"):
        match = _STAGE.match(entry.name)
        if not match:
            continue
        if match.group(2) == host:
            stale = not _alive(int(match.group(1)))
        else:
            stale = time.time() - entry.stat().st_mtime > _STALE_ELSEWHERE_S
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
    _remove_if_empty(state)


@contextlib.contextmanager
def staging_dir(folder: os.PathLike) -> Iterator[Path]:
    """A fresh folder for temporaries in ``folder``'s staging area (same file system, so a
    rename commits); it and the staging area, if then empty, are removed at the end."""
    folder = Path(folder)
    clean_stale(folder)
    state = folder / STATE_DIR
    prefix = f"tmp-{os.getpid()}-{socket.gethostname()}-"
    for attempt in range(3):  # another process may remove the empty staging area in between
        try:
            state.mkdir(exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=prefix, dir=state))
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
        except OSError as error:
            raise write_error(error, folder) from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(state)


def write_error(error: Exception, target: os.PathLike) -> Exception:
    """A failed write as the user should hear of it: a full disk or a refused folder is a
    :class:`UserError` (one line), anything else stays as it was."""
    if isinstance(error, UserError):
        return error
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1:] or ["unknown error"]
    reason = reason if isinstance(reason, str) else reason[0]
    if disk_full(error, target):
        return UserError(
            f"not enough disk space to write {target} ({reason[:80]}); free space on that disk or write "
            "elsewhere (nothing was changed)"
        )
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {target} ({reason}); choose a folder you can write to (nothing was changed)")
    if isinstance(error, OSError):  # the machine's (an I/O error, a vanished folder), not the code's
        return UserError(f"cannot write {target} ({reason}); check that disk and run again (nothing was changed)")
    return error


def existing(path: os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full(error: BaseException, where: os.PathLike) -> bool:
    """Whether ``error``, raised while writing under ``where``, means the disk is full:
    ENOSPC, a quota or a file too big, or a C++ writer's RuntimeError (ITK, ``torch.save``:
    "unexpected pos 576 vs 534") with the disk nearly full."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    if isinstance(error, RuntimeError):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(existing(where)).free < NEARLY_FULL_BYTES
    return False


def fsync_file(path: os.PathLike) -> None:
    with Path(path).open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: os.PathLike) -> None:
    """Make renames in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path with ``target``'s own name (writers that choose a format by the
    extension see it); on success it replaces ``target``, on any error it is removed.
    ``target``'s folder must exist. ``suffix`` is accepted for old callers and ignored."""
    del suffix
    target = Path(target)
    with staging_dir(target.parent) as stage:
        tmp = stage / target.name
        try:
            yield tmp
            fsync_file(tmp)
            tmp.replace(target)
        except (OSError, RuntimeError) as error:
            raise write_error(error, target) from None
        fsync_dir(target.parent)


def check_writable_folder(path: os.PathLike, what: str = "output") -> Path:
    """Check that ``path`` can be made and written without making it (a rejected run leaves no
    empty folder): its nearest existing ancestor must be a folder a file can be written in."""
    path = Path(path)
    base = existing(path)
    if not base.is_dir():
        raise UserError(f"cannot write the {what} folder {path}: {base} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write the {what} folder {path} ({error.strerror or error}); choose a folder you can write to"
        ) from None
    return path


def ensure_writable_dir(path: os.PathLike, what: str = "output") -> Path:
    """Create ``path`` if needed and check a file can be written there; one clear error if not."""
    path = check_writable_folder(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot write the {what} folder {path} ({error.strerror or error}); choose a folder you can write to"
        ) from None
    return path
