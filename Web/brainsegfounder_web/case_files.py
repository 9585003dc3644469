"""Where a web session's images come from: uploads and the server's cases folder.

A case is image files (NIfTI, NRRD, MHA) or a DICOM study: a .zip of it, or its files, uploaded;
or a study folder in the cases folder (the series are picked by the Lib's studies.py). Nothing
here touches a scene. A user-supplied file name or case id is checked with the engine's
:func:`~brainsegfounder.names.plain_name`, so it can never point outside its folder; an upload is
checked (size first, then its image header, by the engine) in a staging folder and moved into the
session's folder only when every file of it is a readable image, so a refused upload leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Mapping, Sequence

from brainsegfounder.archives import safe_extract
from brainsegfounder.atomic import staging_dir
from brainsegfounder.dicom_study import holds_dicom
from brainsegfounder.errors import UserError
from brainsegfounder.imageio import check_image
from brainsegfounder.names import plain_name

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
DEFAULT_MAX_UPLOAD_MB = 1024  # four BraTS volumes are ~40 MB compressed, ~150 MB raw
STUDY = "study"  # the uploaded DICOM study's folder inside the session's upload folder
UNZIP_FACTOR = 4  # a study's zip may unpack to 4x the upload limit (DICOM pixels compress 2-4x)


def image_stem(file_name: str) -> str:
    """'BraTS-GLI-00001-000-t2f.nii.gz' -> 'BraTS-GLI-00001-000-t2f'; refused unless an image type."""
    lowered = file_name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lowered.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    raise UserError(f"{file_name!r} is not a NIfTI, NRRD or MHA file; upload .nii.gz, .nii, .nrrd or .mha images")


def case_images(folder: os.PathLike) -> List[Path]:
    """The image files of one case folder, by name."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            try:
                image_stem(path.name)
            except UserError:
                continue
            found.append(path)
    return found


def _is_case(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and bool(case_images(folder) or holds_dicom(folder))


def list_cases(root: os.PathLike) -> List[str]:
    """The case ids (sub-folders holding images or a DICOM study) of the server's cases folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p.name for p in sorted(root.iterdir()) if _is_case(p)]


def case_folder(root: os.PathLike, case_id: str) -> Path:
    """The folder of ``case_id`` inside ``root`` (an id naming anything else is refused)."""
    folder = Path(root) / plain_name(case_id, "case id")
    if not _is_case(folder):
        raise UserError(f"there is no case {case_id!r} in the cases folder; pick one from the list")
    return folder


def is_study_upload(files: Sequence[Mapping]) -> bool:
    """A DICOM study: one .zip, or files that are DICOM (by their 'DICM' marker, whatever their names)."""
    if len(files) == 1 and str(files[0].get("name", "")).lower().endswith(".zip"):
        return True
    return bool(files) and all(_content(f)[128:132] == b"DICM" for f in files)


def store_study_upload(files: Sequence[Mapping], folder: os.PathLike, max_bytes: int) -> Path:
    """A DICOM study (a .zip, or its files) into ``folder``/study in place of what the session
    held, all or none: over ``max_bytes`` (UNZIP_FACTOR times that unpacked), an unsafe name or zip member, or no DICOM
    file in it refuses the upload with one line and writes nothing. Returns the study folder."""
    check_upload_size(sum(len(_content(f)) for f in files), max_bytes)
    names = [plain_name(str(f.get("name", "")), "file name") for f in files]
    if len({n.lower() for n in names}) != len(names):
        raise UserError("two uploaded files have the same name; rename one and upload again")
    folder = Path(folder)
    with staging_dir(folder) as stage:
        study = stage / STUDY
        study.mkdir()
        for name, item in zip(names, files, strict=True):
            (study / name).write_bytes(_content(item))
        if len(names) == 1 and names[0].lower().endswith(".zip"):
            archive = study / names[0]
            safe_extract(archive, study, UNZIP_FACTOR * max_bytes, names[0])
            archive.unlink()
        if not holds_dicom(study, limit=10**6):
            raise UserError(
                "the upload holds no DICOM file; upload a DICOM study (a .zip of its folder, or its files) "
                "or the case's NIfTI / NRRD images"
            )
        _clear(folder)
        return Path(shutil.move(str(study), str(folder / STUDY)))


def _clear(folder: Path) -> None:
    """What the session's folder held: the previous upload goes (the session holds one case)."""
    for old in case_images(folder):
        old.unlink()
    if (folder / STUDY).is_dir():
        shutil.rmtree(folder / STUDY)


def check_upload_size(total_bytes: int, max_bytes: int) -> None:
    if total_bytes > max_bytes:
        raise UserError(
            f"the upload is {total_bytes / 1e6:.0f} MB, over this server's limit of {max_bytes / 1e6:.0f} MB; "
            "upload fewer or compressed (.nii.gz) files, or ask the administrator to raise --max-upload-mb"
        )


def store_upload(files: Sequence[Mapping], folder: os.PathLike, max_bytes: int) -> List[Path]:
    """Write uploaded files (``{"name": ..., "content": bytes}``, as the browser sends them) into
    ``folder`` (which exists) in place of the images it held, all or none: over ``max_bytes`` in
    total, an unsafe or repeated name, or a file that is not a readable image refuses the whole
    upload with one line and writes nothing."""
    if not files:
        raise UserError("no file was uploaded; choose the case's NIfTI or NRRD images")
    check_upload_size(sum(len(_content(f)) for f in files), max_bytes)
    names = [plain_name(str(f.get("name", "")), "file name") for f in files]
    for name in names:
        image_stem(name)
    if len({n.lower() for n in names}) != len(names):
        raise UserError("two uploaded files have the same name; rename one and upload again")
    folder = Path(folder)
    with staging_dir(folder) as stage:
        staged = []
        for name, item in zip(names, files, strict=True):
            path = stage / name
            path.write_bytes(_content(item))
            try:
                check_image(path, name)
            except UserError:  # the engine's line names the staging path, which is the server's business
                raise UserError(
                    f"{name} is not a readable NIfTI, NRRD or MHA image; upload the case's image files again"
                ) from None
            staged.append(path)
        _clear(folder)
        stored = [Path(shutil.move(str(path), str(folder / path.name))) for path in staged]
    return stored


def _content(item: Mapping) -> bytes:
    content = item.get("content") or b""
    return b"".join(content) if isinstance(content, list) else bytes(content)
