"""Synthetic cases and cohorts in the file layouts of real data sets, with a MONAI datalist.

Kinds and layouts:

* ``brats``   -> ``brats2021`` (``BraTS2021_00001/BraTS2021_00001_{flair,t1ce,t1,t2,seg}.nii.gz``,
  ET = 4) or ``brats2023`` (``BraTS-GLI-00001-000/...-{t2f,t1c,t1n,t2w,seg}.nii.gz``, ET = 3);
  240 x 240 x 155 at 1 mm, LPS;
* ``stroke``  -> ``atlas`` (BIDS ``sub-r001s001/ses-1/anat/..._T1w.nii.gz`` and
  ``..._label-L_desc-T1lesion_mask.nii.gz``), 197 x 233 x 189 at 1 mm, RAS;
* ``healthy`` -> ``ukb`` (UK Biobank-style ``1000001/T1/T1_brain_to_MNI.nii.gz`` and
  ``T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz``), 182 x 218 x 182 at 1 mm, RAS.

Coarser spacings keep the field of view and shrink the grid. A case depends only on
(kind, seed, index, spacing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import UserError
from ..labels import et_label
from ..progress import CancelToken, ProgressCallback, null_progress
from .contrast import render
from .lesions import add_stroke, add_tumour
from .subject import ATLAS_GRID, BRATS_GRID, UKB_GRID, make_subject
from .world import CLASSIC, World

LAYOUTS = {"brats": ("brats2021", "brats2023"), "stroke": ("atlas",), "healthy": ("ukb",)}
GRIDS = {"brats": BRATS_GRID, "stroke": ATLAS_GRID, "healthy": UKB_GRID}
MODALITIES = {"brats": ("flair", "t1ce", "t1", "t2"), "stroke": ("t1",), "healthy": ("t1", "flair")}


@dataclass
class SynthCase:
    images: Dict[str, sitk.Image]  # canonical modality -> image
    regions: Dict[str, np.ndarray] = field(default_factory=dict)  # named lesion masks (z, y, x)

    def label_image(self, layout: str) -> Optional[sitk.Image]:
        if not self.regions:
            return None
        reference = next(iter(self.images.values()))
        labels = np.zeros(reference.GetSize()[::-1], np.uint8)
        if "edema" in self.regions:
            labels[self.regions["edema"]] = 2
            labels[self.regions["necrosis"]] = 1
            labels[self.regions["enhancing"]] = et_label(layout)
        else:
            labels[self.regions["infarct"]] = 1
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(reference)
        return image


def make_case(kind: str, seed: int, index: int, spacing: float = 1.0, world: World = CLASSIC) -> SynthCase:
    """One case. The classic world is drawn exactly as before the world had switches (the demo
    model and the measurements in the registry were made on it); any switch on takes the
    variation path (:mod:`.realistic`)."""
    if kind not in LAYOUTS:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(LAYOUTS)}")
    if not 0.5 <= spacing <= 4:
        raise UserError(f"spacing {spacing} mm is outside 0.5..4 mm")
    if not world.classic:
        from .realistic import make_varied_case

        return make_varied_case(kind, seed, index, spacing, world)
    rng = np.random.default_rng([seed, index])
    subject = make_subject(rng, GRIDS[kind], spacing)
    regions: Dict[str, np.ndarray] = {}
    if kind == "brats":
        tumour = add_tumour(rng, subject)
        regions = {"necrosis": tumour.necrosis, "enhancing": tumour.enhancing, "edema": tumour.edema}
    elif kind == "stroke":
        regions = {"infarct": add_stroke(rng, subject)}
    gain = rng.uniform(400, 3000)  # scanners differ in absolute scale; z-scoring removes it
    images = {}
    for modality in MODALITIES[kind]:
        array = render(rng, subject, modality, regions, gain=gain)
        image = sitk.GetImageFromArray(np.round(array).astype(np.int16))
        image.CopyInformation(subject.grid)
        images[modality] = image
    return SynthCase(images=images, regions=regions)


def _brats_names(layout: str, index: int):
    if layout == "brats2021":
        case = f"BraTS2021_{index + 1:05d}"
        tags = {"flair": "flair", "t1ce": "t1ce", "t1": "t1", "t2": "t2"}
    else:
        case = f"BraTS-GLI-{index + 1:05d}-000"
        tags = {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"}
    images = {
        m: f"{case}/{case}-{t}.nii.gz" if layout == "brats2023" else f"{case}/{case}_{t}.nii.gz"
        for m, t in tags.items()
    }
    label = f"{case}/{case}-seg.nii.gz" if layout == "brats2023" else f"{case}/{case}_seg.nii.gz"
    return case, images, label


def case_files(layout: str, index: int):
    """(case folder, {modality: relative path}, relative label path or None) for a layout."""
    if layout in ("brats2021", "brats2023"):
        return _brats_names(layout, index)
    if layout == "atlas":
        sub = f"sub-r001s{index + 1:03d}"
        stem = f"{sub}/ses-1/anat/{sub}_ses-1_space-MNI152NLin2009aSym"
        return sub, {"t1": f"{stem}_T1w.nii.gz"}, f"{stem}_label-L_desc-T1lesion_mask.nii.gz"
    if layout == "ukb":
        eid = f"{1000001 + index}"
        return (
            eid,
            {"t1": f"{eid}/T1/T1_brain_to_MNI.nii.gz", "flair": f"{eid}/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz"},
            None,
        )
    raise UserError(f"unknown layout {layout!r}")


def write_cohort(
    out: os.PathLike,
    kind: str = "brats",
    n: int = 5,
    seed: int = 0,
    spacing: float = 1.0,
    layout: Optional[str] = None,
    folds: int = 5,
    start: int = 0,
    world: World = CLASSIC,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write ``n`` cases and ``datalist.json``; returns the data set root.

    Each case is written into a hidden temporary folder and renamed into place, so an
    interrupted run leaves only whole cases; existing cases are never overwritten.
    """
    if kind not in LAYOUTS:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(LAYOUTS)}")
    layout = layout or LAYOUTS[kind][0]
    if layout not in LAYOUTS[kind]:
        raise UserError(f"layout {layout!r} does not fit kind {kind!r}; use {' or '.join(LAYOUTS[kind])}")
    if n < 1 or folds < 1:
        raise UserError("--n and --folds must be at least 1")
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {root} ({error.strerror}); choose a folder you can write to") from None
    indices = range(start, start + n)
    clashes = [case_files(layout, i)[0] for i in indices if (root / case_files(layout, i)[0]).exists()]
    if clashes:
        raise UserError(
            f"{root} already holds case {clashes[0]} (and {len(clashes) - 1} more); "
            "write to a new folder or use --start to add cases after it"
        )
    entries = []
    for count, index in enumerate(indices):
        progress("synth", count, n, f"case {index + 1}")
        if cancel is not None and cancel.cancelled:
            break  # whole cases written so far stay, and are listed in the datalist below
        case = make_case(kind, seed, index, spacing, world)
        folder, images, label = case_files(layout, index)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
        try:
            for modality, rel in images.items():
                target = tmp / Path(rel).relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(case.images[modality], str(target), useCompression=True)
            label_image = case.label_image(layout)
            if label:
                target = tmp / Path(label).relative_to(folder)
                sitk.WriteImage(label_image, str(target), useCompression=True)
            tmp.replace(root / folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        entry = {"fold": index % folds, "image": [images[m] for m in MODALITIES[kind]]}
        if label:
            entry["label"] = label
        entries.append(entry)
    progress("synth", len(entries), n)
    _merge_datalist(
        root,
        entries,
        {
            "synthetic": True,  # models trained on these cases say so (checkpoints.TRAINED_ON)
            "kind": kind,
            "layout": layout,
            "seed": seed,
            "spacing_mm": spacing,
            "modalities": list(MODALITIES[kind]),
            "folds": folds,
            "world": list(world.enabled()) or "classic",
        },
    )
    if cancel is not None:
        cancel.check()
    return root


def _merge_datalist(root: Path, entries: List[dict], description: dict) -> None:
    path = root / "datalist.json"
    datalist = {"description": description, "training": []}
    if path.exists():
        try:
            datalist = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON; move it away before adding cases") from None
    known = {json.dumps(e, sort_keys=True) for e in datalist.get("training", [])}
    datalist.setdefault("training", []).extend(e for e in entries if json.dumps(e, sort_keys=True) not in known)
    datalist["description"] = description
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(datalist, indent=1) + "\n")
