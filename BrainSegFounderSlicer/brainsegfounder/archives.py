"""Zip archives from users (a model bundle, a DICOM study from the browser), unpacked safely: a
member whose path would land outside the target folder (zip slip) or an archive that unpacks to
more than a limit (a zip bomb) is refused, with one line, before anything is written."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from .errors import UserError


def safe_extract(zip_path: os.PathLike, into: os.PathLike, max_bytes: int, what: str = "the archive") -> Path:
    """Unpack ``zip_path`` into the existing folder ``into``; returns ``into``. ``what`` names
    the archive in errors (the user's name for it, not a server path)."""
    root = Path(into).resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{what} is not a valid .zip; make the archive again") from None
    with archive:
        members = archive.infolist()
        for member in members:
            target = (root / member.filename).resolve()
            if member.filename.startswith(("/", "\\")) or root not in (target, *target.parents):
                raise UserError(f"{what} holds {member.filename!r}, which points outside the archive's folder; refused")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise UserError(f"{what} unpacks to {total / 1e6:.0f} MB, over the limit of {max_bytes / 1e6:.0f} MB")
        try:
            archive.extractall(root)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise UserError(f"{what} is damaged ({error}); make the archive again") from None
    return root
