"""Writing the files of a run or an evaluation: atomically, and a failed write as one line.

A full disk (ENOSPC, a quota, a file too big) is the user's to fix, so it is a
:class:`UserError` that says the disk is full, what was kept and how to go on, never an
"internal error". ``torch.save`` and ITK's writers report a full disk as ``RuntimeError``
(measured: "unexpected pos 576 vs 534"), so one of those with the disk nearly full counts too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from brainsegfounder.atomic import DISK_FULL, NEARLY_FULL_BYTES, fsync_dir, fsync_file, staging_dir
from brainsegfounder.errors import UserError


def existing(path: os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full(error: BaseException, where: os.PathLike) -> bool:
    """Whether ``error``, raised while writing under ``where``, means the disk is full."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    if isinstance(error, RuntimeError):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(existing(where)).free < NEARLY_FULL_BYTES
    return False


def write_failure(path: os.PathLike, error: BaseException, kept: str, next_step: str) -> BaseException:
    """The one line for a failed write of ``path``: why, ``kept`` (what survived, a sentence) and
    ``next_step`` (e.g. "continue with --resume RUN"). An error that is no failed write (a bug)
    is returned as it was."""
    if isinstance(error, UserError):
        # the engine's staging area turned an OSError into its own line; ours says what was kept
        cause = error.__context__
        if not isinstance(cause, OSError):
            return error
        error = cause
    if disk_full(error, path):
        reason, fix = "the disk is full", "Free space"
    elif isinstance(error, OSError):
        reason, fix = error.strerror or str(error), "Fix that"
    else:
        return error
    return UserError(f"cannot write {path} ({reason}); {kept} {fix} and {next_step}")


@contextlib.contextmanager
def write_file(path: os.PathLike, kept: str, next_step: str) -> Iterator[Path]:
    """Yields a temporary with ``path``'s name in its folder's staging area; on success it
    replaces ``path``, on any error it is removed and ``path`` stays as it was."""
    path = Path(path)
    try:
        with staging_dir(path.parent) as stage:
            tmp = stage / path.name
            yield tmp
            fsync_file(tmp)
            tmp.replace(path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError, UserError) as error:
        raise write_failure(path, error, kept, next_step) from None


def append_text(path: os.PathLike, text: str, kept: str, next_step: str) -> None:
    """Append to a log (metrics.jsonl); a line cut short by a full disk or a kill is skipped by
    its readers, and a resumed run rewrites the log from the records it keeps."""
    try:
        with Path(path).open("a") as f:
            f.write(text)
    except OSError as error:
        raise write_failure(path, error, kept, next_step) from None
