"""Unlabelled cohorts for pretraining: datalists, BIDS, UK Biobank-style, BraTS and plain folders.

Each source becomes a list of :class:`Subject` records (inputs in the recipe's channel
order). Discovery only looks at file names: reading tens of thousands of headers up front
would take hours, so broken files are found (and skipped) when first read. Subjects that
lack one of the recipe's inputs are left out and listed with the reason.

Layouts recognised:

* a MONAI datalist (``training`` / ``validation`` entries with an ``image`` list, or a
  ``{modality: path}`` mapping; ``description.modalities`` names the list order);
* UK Biobank-style folders: ``EID[_FIELD_INSTANCE_ARRAY]/T1/T1_brain_to_MNI.nii.gz`` and
  ``.../T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz`` (the T1 and FLAIR downloads of one subject and
  visit are joined);
* BIDS: ``sub-*/[ses-*/]anat/*_{T1w,T2w,FLAIR}.nii[.gz]`` (``ce-*`` T1w is t1ce), one
  subject per subject and session;
* BraTS 2021 / 2023 case folders (labels, if present, are not used);
* plain folders: one folder per subject whose image files are named by modality
  (``t1.nii.gz``, ``flair.nrrd``, ``sub01_T2w.mha``, ...).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from brainsegfounder.errors import UserError
from brainsegfounder.modalities import canonical, guess_from_text

from ..harness.data import BRATS_TAGS, data_path, inside

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
UKB_FILES = {
    "t1": ("T1", "T1_brain_to_MNI.nii.gz"),
    "flair": ("T2_FLAIR", "T2_FLAIR_brain_to_MNI.nii.gz"),
    "t2": ("T2", "T2_brain_to_MNI.nii.gz"),
}
BIDS_SUFFIXES = {"T1w": "t1", "T2w": "t2", "FLAIR": "flair"}


@dataclass(frozen=True)
class Subject:
    subject_id: str
    images: Dict[str, str]  # modality -> absolute path, in the recipe's channel order

    def to_dict(self) -> dict:
        return {"id": self.subject_id, "images": self.images}

    @classmethod
    def from_dict(cls, data: dict) -> "Subject":
        return cls(data["id"], dict(data["images"]))


Found = Tuple[List[Subject], List[dict]]  # (subjects, [{"id", "reason"} of those left out])


def _complete(found: Dict[str, Dict[str, str]], modalities: Sequence[str]) -> Found:
    subjects, left_out = [], []
    for subject_id in sorted(found):
        images = found[subject_id]
        missing = [m for m in modalities if m not in images]
        if missing:
            left_out.append({"id": subject_id, "reason": f"no {', '.join(missing)} image"})
        else:
            subjects.append(Subject(subject_id, {m: images[m] for m in modalities}))
    return subjects, left_out


def from_datalist(path: Path, modalities: Sequence[str], section: str = "training") -> Found:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read the datalist {path} ({error}); give a MONAI datalist JSON file") from None
    if not isinstance(data, dict) or not isinstance(data.get(section, []), list):
        raise UserError(f"datalist {path} must be a JSON object with a '{section}' list")
    root = path.parent
    described = [canonical(m) or str(m).lower() for m in (data.get("description") or {}).get("modalities") or []]
    found: Dict[str, Dict[str, str]] = {}
    for i, entry in enumerate(data.get(section, [])):
        images = entry.get("image") if isinstance(entry, dict) else None
        if isinstance(images, str):
            images = [images]
        if isinstance(images, dict):
            named = {canonical(k) or k.lower(): v for k, v in images.items()}
        elif isinstance(images, list) and described and len(images) == len(described):
            named = dict(zip(described, images, strict=True))
        elif isinstance(images, list) and len(images) == len(modalities):
            named = dict(zip(modalities, images, strict=True))  # no names given: the recipe's order is assumed
        else:
            raise UserError(
                f"datalist {path} {section} entry {i} needs 'image' as a list in the order of "
                f"description.modalities, or a mapping of modality to path"
            )
        first = next(iter(named.values()))
        subject_id = str(entry.get("id") or entry.get("case_id") or Path(first).parts[0].split(".")[0])
        if subject_id in found:
            subject_id = f"{subject_id}#{i}"
        found[subject_id] = {m: inside(root, p) for m, p in named.items()}
    return _complete(found, modalities)


def _ukb_subject(folder_name: str) -> str:
    """``1000001_20252_2_0`` (EID, field, instance, array) -> ``1000001_2_0``; plain EIDs as they are."""
    parts = folder_name.split("_")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return f"{parts[0]}_{parts[2]}_{parts[3]}"
    return folder_name


def from_ukb_folder(root: Path, modalities: Sequence[str]) -> Found:
    found: Dict[str, Dict[str, str]] = {}
    with os.scandir(root) as entries:
        folders = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
    for folder in folders:
        for modality, (sub, name) in UKB_FILES.items():
            path = Path(folder, sub, name)
            if path.is_file():
                found.setdefault(_ukb_subject(Path(folder).name), {})[modality] = str(path)
    return _complete(found, modalities) if found else ([], [])


def _image_stem(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return ""


def from_bids(root: Path, modalities: Sequence[str]) -> Found:
    found: Dict[str, Dict[str, str]] = {}
    for anat in sorted(root.glob("sub-*/anat")) + sorted(root.glob("sub-*/ses-*/anat")):
        session = anat.parent.name if anat.parent.name.startswith("ses-") else ""
        subject = anat.parent.parent.name if session else anat.parent.name
        subject_id = f"{subject}_{session}" if session else subject
        for file in sorted(anat.iterdir()):
            stem = _image_stem(file.name)
            suffix = stem.rsplit("_", 1)[-1] if stem else ""
            if suffix not in BIDS_SUFFIXES or "_label-" in stem or "_mask" in stem:
                continue
            modality = "t1ce" if suffix == "T1w" and re.search(r"_ce-[^_]+", stem) else BIDS_SUFFIXES[suffix]
            found.setdefault(subject_id, {}).setdefault(modality, str(file))  # first run of a repeated scan
    return _complete(found, modalities) if found else ([], [])


def from_brats_folder(root: Path, modalities: Sequence[str]) -> Found:
    found: Dict[str, Dict[str, str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for convention, tags in BRATS_TAGS.items():
            sep = "_" if convention == "brats2021" else "-"
            images = {m: folder / f"{folder.name}{sep}{t}.nii.gz" for m, t in tags.items()}
            if any(p.is_file() for p in images.values()):
                found[folder.name] = {m: str(p) for m, p in images.items() if p.is_file()}
                break
    return _complete(found, modalities) if found else ([], [])


def from_plain_folders(root: Path, modalities: Sequence[str]) -> Found:
    found: Dict[str, Dict[str, str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.iterdir()):
            stem = _image_stem(file.name)
            modality = guess_from_text(stem) if stem else None
            if modality is None and stem.lower() in modalities:
                modality = stem.lower()  # other names (dwi, adc, ...) as the recipe writes them
            if modality:
                found.setdefault(folder.name, {}).setdefault(modality, str(file))
    return _complete(found, modalities) if found else ([], [])


def discover_subjects(path, modalities: Sequence[str], section: str = "training") -> Found:
    """Subjects of a cohort (stable order) and those left out with their reasons."""
    path = data_path(
        path,
        "no pretraining data given; set --data (data.path) to a datalist.json or a folder of "
        "subjects (BIDS, UK Biobank-style, BraTS or one folder per subject)",
    )
    modalities = [canonical(m) or m.lower() for m in modalities]
    if path.is_file():
        found = from_datalist(path, modalities, section)
    elif (path / "datalist.json").is_file():
        found = from_datalist(path / "datalist.json", modalities, section)
    else:
        found = ([], [])
        for finder in (from_ukb_folder, from_bids, from_brats_folder, from_plain_folders):
            found = finder(path, modalities)
            if found[0] or found[1]:
                break
    subjects, left_out = found
    if not subjects and section == "training":
        reason = (
            f" ({len(left_out)} subjects lack inputs, e.g. {left_out[0]['id']}: {left_out[0]['reason']})"
            if left_out
            else ""
        )
        raise UserError(
            f"no subjects with {', '.join(modalities)} found in {path}{reason}; give a datalist.json, "
            "BIDS, UK Biobank-style, BraTS or one-folder-per-subject data"
        )
    return subjects, left_out


@dataclass
class Cohort:
    """The subjects a run trains and validates on, and those left out (with the reason)."""

    train: List[Subject]
    validation: List[Subject]
    left_out: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "train": [s.to_dict() for s in self.train],
            "validation": [s.to_dict() for s in self.validation],
            "left_out": self.left_out,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Cohort":
        return cls(
            [Subject.from_dict(s) for s in data["train"]],
            [Subject.from_dict(s) for s in data["validation"]],
            data["left_out"],
        )


def split_subjects(subjects: List[Subject], data: dict, seed: int):
    """(train, validation): a seeded share held out (BrainSegFounder: 1,917 of 41,400); ``data``
    is the recipe's data block (``val_fraction``, ``max_val_subjects``)."""
    if len(subjects) < 2:
        raise UserError(f"pretraining needs at least 2 subjects (1 to train, 1 to validate); found {len(subjects)}")
    n_val = min(
        int(data["max_val_subjects"]), max(1, round(float(data["val_fraction"]) * len(subjects))), len(subjects) - 1
    )
    order = np.random.default_rng(seed).permutation(len(subjects))
    held = set(order[:n_val].tolist())
    return [s for i, s in enumerate(subjects) if i not in held], [s for i, s in enumerate(subjects) if i in held]


def find_cohort(data: dict, modalities: Sequence[str], seed: int) -> Cohort:
    """The recipe's ``data`` block as a cohort: ``data.validation`` as the validation subjects
    (and out of training), or a seeded share of ``data.path`` held out."""
    subjects, left_out = discover_subjects(data["path"], modalities)
    if data["validation"]:
        val, val_left = discover_subjects(data["validation"], modalities)
        val_files = {p for s in val for p in s.images.values()}
        train = [s for s in subjects if not val_files & set(s.images.values())]
        return Cohort(train, val, left_out + val_left)
    train, val = split_subjects(subjects, data, seed)
    return Cohort(train, val, left_out)
