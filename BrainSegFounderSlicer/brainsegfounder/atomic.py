"""Atomic file writes: write next to the target, fsync, then rename over it.

A reader never sees a half-written file, and a crash leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(target: os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    ``suffix`` keeps the extension visible to writers that choose a format by it
    (e.g. ``.nii.gz``). On any error the temporary file is removed.
    """
    target = Path(target)
    handle, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or "".join(target.suffixes), dir=target.parent
    )
    os.close(handle)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; the result gets a normal file's mode
    try:
        yield tmp_path
        with tmp_path.open("rb") as f:
            os.fsync(f.fileno())
        tmp_path.replace(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def ensure_writable_dir(path: os.PathLike, what: str = "output") -> Path:
    """Create ``path`` if needed and check a file can be written there; one clear error if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write the {what} folder {path} ({error.strerror or error}); choose a folder you can write to"
        ) from None
    return path
