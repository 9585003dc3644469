"""Writing the files of a run or an evaluation: atomically, and a failed write as one line.

A full disk (ENOSPC, a quota, a file too big) is the user's to fix, so it is a
:class:`UserError` that says the disk is full, what was kept and how to go on, never an
"internal error". ``torch.save`` and ITK's writers report a full disk as ``RuntimeError``
(measured: "unexpected pos 576 vs 534"), so one of those with the disk nearly full counts too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from brainsegfounder.atomic import atomic_path, disk_full
from brainsegfounder.errors import UserError


def write_failure(path: os.PathLike, error: BaseException, kept: str, next_step: str) -> BaseException:
    """The one line for a failed write of ``path``: why, ``kept`` (what survived, a sentence) and
    ``next_step`` (e.g. "continue with --resume RUN"). An error that is no failed write (a bug)
    is returned as it was."""
    if isinstance(error, UserError):
        # the engine's staging area turned an OSError into its own line; ours says what was kept
        cause = error.__context__
        if not isinstance(cause, (OSError, RuntimeError)):
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
    """:func:`~brainsegfounder.atomic.atomic_path` whose failure says what was kept and how to go on."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
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
