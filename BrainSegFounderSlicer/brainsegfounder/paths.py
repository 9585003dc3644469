"""Paths people give: one check, one line for each way a path can fail to lead to its file.

A missing file, a dangling link, a loop of symbolic links, a folder given as a file (or a file
as a folder), a device or pipe (reading would block forever), no permission, an empty file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from .errors import UserError


def check_path(path: os.PathLike, label: str, kind: str = "any", hint: str = "check the path") -> os.stat_result:
    """``path`` leads to a readable file (``kind="file"``), folder (``"folder"``) or either
    (``"any"``); otherwise a :class:`UserError` that starts with ``label``. ``hint`` says what
    to give instead."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(
                f"{label}: {path} is a symbolic link to {path.readlink()}, which does not exist; {hint}"
            ) from None
        raise UserError(f"{label}: {path} does not exist; {hint}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(f"{label}: {path} is a loop of symbolic links (it leads back to itself); {hint}") from None
        if error.errno == errno.EACCES:
            raise UserError(
                f"{label}: permission denied reaching {path}; make its folders readable for this user"
            ) from None
        if error.errno == errno.ENOTDIR:
            raise UserError(f"{label}: {path} runs through a file as if it were a folder; {hint}") from None
        raise UserError(f"{label}: cannot open {path} ({error.strerror}); {hint}") from None
    is_dir, is_file = stat.S_ISDIR(info.st_mode), stat.S_ISREG(info.st_mode)
    if not (is_dir or is_file):  # a pipe would block the read forever, a device never ends
        raise UserError(f"{label}: {path} is not a regular file (a device, pipe or socket); {hint}")
    if kind == "file" and is_dir:
        raise UserError(f"{label}: {path} is a folder, not a file; {hint}")
    if kind == "folder" and is_file:
        raise UserError(f"{label}: {path} is a file, not a folder; {hint}")
    try:
        if is_dir:
            os.scandir(path).close()
        else:
            path.open("rb").close()
    except PermissionError:
        raise UserError(
            f"{label}: permission denied reading {path}; make it readable for this user (e.g. chmod a+r)"
        ) from None
    except OSError as error:
        raise UserError(f"{label}: cannot open {path} ({error.strerror}); {hint}") from None
    if is_file and info.st_size == 0:
        raise UserError(f"{label}: {path} is empty (0 bytes); copy or export it again")
    return info


def sha256_of(path: os.PathLike) -> str:
    """The SHA-256 of a file's content (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
