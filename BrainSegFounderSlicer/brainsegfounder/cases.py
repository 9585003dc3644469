"""Training case folders: what "Save as training case" writes and what ``finetune`` reads.

Layout of a data set root::

    ROOT/datalist.json                     MONAI datalist of the newest revision of each case
    ROOT/<case>/r001/<modality>.nii.gz     inputs on the reference grid, in the model's order
    ROOT/<case>/r001/label.nii.gz          the (corrected) label map on the same grid
    ROOT/<case>/r001/case.json             modalities, label schema, source model, who/when, hash

A revision folder is written under a hidden temporary name and renamed into place, so a
reader never sees half a case; saving a case again makes the next revision, never an
overwrite. ``datalist.json`` is rewritten atomically after each save.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import UserError
from .geometry import same_grid
from .imageio import write_image
from .names import plain_name

CASE_FILE = "case.json"
DATALIST = "datalist.json"
FORMAT = "brainsegfounder-cases"


@dataclass(frozen=True)
class SavedCase:
    case_id: str
    revision: int
    folder: Path
    info: dict


def content_hash(images: Mapping[str, sitk.Image], label: sitk.Image) -> str:
    """SHA-256 over the voxels and grids of the inputs and the label (not the file bytes,
    which depend on the compressor)."""
    digest = hashlib.sha256()
    for name, image in [*list(images.items()), ("label", label)]:
        digest.update(name.encode())
        digest.update(
            json.dumps([image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()]).encode()
        )
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return digest.hexdigest()


def save_case(
    root: os.PathLike,
    case_id: str,
    images: Mapping[str, sitk.Image],
    label: sitk.Image,
    label_schema: str,
    label_convention: str = "brats2021",
    source_model: Optional[dict] = None,
    author: Optional[str] = None,
    note: str = "",
) -> SavedCase:
    """Write one training case revision (inputs in model order, label on the first input's grid)."""
    plain_name(case_id, "case id")
    if not images:
        raise UserError("a training case needs at least one input image")
    reference = next(iter(images.values()))
    for name, image in [*list(images.items()), ("label", label)]:
        if not same_grid(image, reference):
            raise UserError(
                f"{name} is not on the reference grid of the case; resample it onto {next(iter(images))} first"
            )
    labels = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError("the label map must hold integer labels")
    root = Path(root)
    try:
        (root / case_id).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {root / case_id} ({error.strerror}); choose a folder you can write to"
        ) from None
    revision = max([r.revision for r in _revisions(root / case_id)], default=0) + 1
    info = {
        "format": FORMAT,
        "case_id": case_id,
        "revision": revision,
        "modalities": list(images),
        "images": {m: f"{m}.nii.gz" for m in images},
        "label": "label.nii.gz",
        "label_schema": label_schema,
        "label_convention": label_convention,
        "label_values": sorted(int(v) for v in np.unique(labels)),
        "source_model": dict(source_model or {}),
        "author": author or _user(),
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "content_sha256": content_hash(images, label),
        "note": note,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".r{revision:03d}.", dir=root / case_id))
    try:
        for modality, image in images.items():
            write_image(sitk.Cast(image, sitk.sitkFloat32), tmp / info["images"][modality])
        write_image(sitk.Cast(label, sitk.sitkUInt8), tmp / info["label"])
        (tmp / CASE_FILE).write_text(json.dumps(info, indent=1) + "\n")
        target = root / case_id / f"r{revision:03d}"
        if target.exists():  # another writer took this revision number meanwhile
            raise UserError(f"{target} appeared while saving; save again")
        tmp.replace(target)
    except OSError as error:
        raise UserError(
            f"cannot write training case {case_id} ({error.strerror or error}); "
            "nothing was saved: free disk space and save again"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_datalist(root)
    return SavedCase(case_id, revision, target, info)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _revisions(case_dir: Path) -> List[SavedCase]:
    found = []
    for folder in sorted(case_dir.glob("r[0-9][0-9][0-9]")):
        path = folder / CASE_FILE
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # damaged: skipped, and listed by list_cases' caller through its absence
            found.append(SavedCase(case_dir.name, int(info.get("revision", folder.name[1:])), folder, info))
    return found


def list_cases(root: os.PathLike) -> List[SavedCase]:
    """The newest revision of every saved case under ``root``, sorted by case id."""
    root = Path(root)
    if not root.is_dir():
        return []
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        revisions = _revisions(case_dir)
        if revisions:
            cases.append(max(revisions, key=lambda r: r.revision))
    return cases


def is_case_root(root: os.PathLike) -> bool:
    return any(True for _ in Path(root).glob(f"*/r[0-9][0-9][0-9]/{CASE_FILE}"))


def write_datalist(root: os.PathLike) -> Path:
    """MONAI datalist of the newest revisions (paths relative to ``root``), written atomically."""
    root = Path(root)
    training = []
    for case in list_cases(root):
        rel = case.folder.relative_to(root)
        training.append(
            {
                "case_id": case.case_id,
                "revision": case.revision,
                "image": [str(rel / case.info["images"][m]) for m in case.info["modalities"]],
                "label": str(rel / case.info["label"]),
            }
        )
    modalities = sorted({tuple(c.info["modalities"]) for c in list_cases(root)})
    description: Dict[str, object] = {"format": FORMAT}
    if len(modalities) == 1:
        description["modalities"] = list(modalities[0])
    path = root / DATALIST
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps({"description": description, "training": training}, indent=1) + "\n")
    return path
