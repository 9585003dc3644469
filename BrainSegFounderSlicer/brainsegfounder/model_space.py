"""Scans from a hospital scanner into the space a model was trained in.

BraTS-trained models (BrainSegFounder's) saw co-registered, skull-stripped 1 mm scans. A
patient's study has thick or oblique slices, a few mm of motion between sequences, skull and
scalp. For a model whose metadata says so (:meth:`ModelMeta.expects`), :func:`prepare`:

1. takes the reference contrast (the model's first input, or the one asked for);
2. registers every other contrast rigidly onto it (registration.py);
3. resamples each contrast once, from its own grid through its transform, onto the model's
   voxel size over the reference's field of view (a 5 mm FLAIR no longer makes the case 5 mm);
4. extracts the brain (brain_extraction.py) from the T1-weighted contrast where the reference is
   not skull-stripped already.

Inputs that all share one grid and are zero outside a brain-sized region (BraTS-like) are
taken as preprocessed: steps 2 and 4 are skipped and the summary says why. Atlas registration
(SRI24) is not done. Every step is timed and reported; findings a radiologist can act on are
returned as warnings (case_warnings.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from . import brain_extraction, case_warnings
from .errors import UserError
from .geometry import grid_at_spacing, needs_model_spacing, reorient, same_grid
from .progress import CancelToken, ProgressCallback, null_progress

MODES = ("auto", "always", "off")
# The contrast deepbet reads best (it was trained on T1-weighted heads), in order of preference.
EXTRACTION_CONTRASTS = ("t1", "t1ce")


@dataclass
class PrepOptions:
    """What ``segment`` does to bring the inputs into the model's space.

    Args:
        mode: auto (what the model needs, unless the inputs look preprocessed), always (every
            step the model needs, even on inputs that look preprocessed), off (inputs as given,
            resampled onto the reference's grid: the behaviour before preprocessing existed).
        reference: the contrast whose grid the result is written on (default the model's first input).
        registration: co-register the contrasts (where the model needs it).
        brain_extraction: strip the skull (where the model needs it).
    """

    mode: str = "auto"
    reference: Optional[str] = None
    registration: bool = True
    brain_extraction: bool = True

    def validate(self, modalities) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown preprocessing mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.reference is not None and self.reference not in modalities:
            raise UserError(
                f"--reference {self.reference} is not one of the model's inputs ({', '.join(modalities)}); "
                "name one of them"
            )


@dataclass
class Prepared:
    """The case in the model's space, network-oriented (C, i, j, k) in the model's channel order."""

    volume: np.ndarray
    grid: sitk.Image  # an image on the model grid (its voxels unused)
    tissue: np.ndarray  # (i, j, k) voxels the model may label: the brain where it was extracted
    brain_mask: Optional[np.ndarray]  # (i, j, k) bool where a brain mask exists (extracted or stripped input)
    report: dict = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)


def _arrays_on(images: Dict[str, sitk.Image], grid: sitk.Image, transforms: Dict[str, sitk.Transform]):
    """Each image resampled once (linear, through its transform) onto ``grid``: (C, i, j, k)."""
    out = []
    for name, image in images.items():
        transform = transforms.get(name, sitk.Transform())
        if same_grid(image, grid) and name not in transforms:
            out.append(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)).transpose(2, 1, 0))
            continue
        # Cubic B-spline keeps the contrast linear interpolation smooths away (a half-voxel shift
        # averages neighbours: the demo model found half the edema on such a case); its overshoot
        # is cut where linear interpolation says there is no signal (outside a stripped brain).
        sharp = sitk.GetArrayFromImage(sitk.Resample(image, grid, transform, sitk.sitkBSpline, 0.0, sitk.sitkFloat32))
        support = sitk.GetArrayFromImage(sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        out.append(np.where(support > 0, np.maximum(sharp, 0), support).transpose(2, 1, 0))
    return np.stack(out)


def _image_of(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def prepare(
    images: Dict[str, sitk.Image],
    meta,
    options: PrepOptions,
    spacing_mode: str = "model",
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
) -> Prepared:
    """``images`` (native grids, the model's channel order) in the model's space; see the module."""
    cancel = cancel or CancelToken()
    names = list(images)
    reference = options.reference or names[0]
    ref_image = images[reference]
    wants_stripped, wants_coregistered = meta.expects()
    timings: Dict[str, float] = {}
    warnings: List[str] = []

    t0 = time.perf_counter()
    checks = {name: brain_extraction.looks_stripped(image) for name, image in images.items()}
    one_grid = all(same_grid(image, ref_image) for image in images.values())
    preprocessed = one_grid and checks[reference].stripped and options.mode != "always"
    timings["detect_s"] = time.perf_counter() - t0
    report = {
        "mode": options.mode,
        "reference": reference,
        "model_expects": {"skull_stripped": wants_stripped, "coregistered": wants_coregistered},
        "inputs_share_one_grid": one_grid,
        "looks_preprocessed": preprocessed,
        "detection": {name: check.to_dict() for name, check in checks.items()},
    }
    warnings += case_warnings.input_warnings(images)

    # 2. co-registration onto the reference
    transforms: Dict[str, sitk.Transform] = {}
    registration = {}
    if not wants_coregistered or len(names) == 1:
        report["registration"] = "not needed (the model takes one input or was trained on unregistered ones)"
    elif not options.registration:
        report["registration"] = "skipped (--skip-registration)"
    elif preprocessed:
        report["registration"] = "skipped: the inputs share one grid and look preprocessed (BraTS-like)"
    else:
        from .registration import rigid_register

        t0 = time.perf_counter()
        others = [n for n in names if n != reference]
        for i, name in enumerate(others):
            progress("register", i, len(others), f"registering {name} onto {reference}")
            result = rigid_register(ref_image, images[name])
            transforms[name] = result.transform
            registration[name] = result.to_dict()
            warnings += case_warnings.registration_warnings(name, reference, result)
            cancel.check()
        progress("register", len(others), len(others))
        report["registration"] = registration
        timings["register_s"] = time.perf_counter() - t0

    # 3. one resampling per contrast, onto the model grid over the reference's field of view
    t0 = time.perf_counter()
    oriented = reorient(ref_image, meta.orientation)
    spacing = meta.spacing_mm if spacing_mode == "model" else None
    if spacing is not None and needs_model_spacing(oriented, spacing):
        grid = grid_at_spacing(oriented, spacing)
    else:
        grid = sitk.Image(oriented.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(oriented)
    progress("resample", 0, 1, f"resampling to {'x'.join(f'{v:g}' for v in grid.GetSpacing())} mm")
    volume = _arrays_on(images, grid, transforms)
    report["grid"] = {
        "size": list(grid.GetSize()),
        "spacing_mm": [round(v, 4) for v in grid.GetSpacing()],
        "orientation": meta.orientation,
    }
    timings["resample_s"] = time.perf_counter() - t0
    cancel.check()

    # 4. brain extraction
    brain: Optional[np.ndarray] = None
    extraction: dict = {}
    if not wants_stripped:
        extraction["done"] = "not needed (the model was trained on scans with skull)"
    elif not options.brain_extraction:
        extraction["done"] = "skipped (--skip-brain-extraction)"
    elif checks[reference].stripped and options.mode != "always":
        extraction["done"] = f"skipped: {reference} looks skull-stripped already"
        brain = volume[names.index(reference)] != 0
    elif not brain_extraction.available():
        extraction["done"] = "skipped: deepbet is not installed"
        warnings.append(
            "brain extraction skipped: deepbet is not installed (" + brain_extraction.INSTALL_HINT + "); the model "
            "sees skull and scalp it was not trained on, so expect false segments outside the brain"
        )
    else:
        source = next((n for n in EXTRACTION_CONTRASTS if n in images), reference)
        progress("brain_extraction", 0, 1, f"extracting the brain from {source}")
        t0 = time.perf_counter()
        mask = brain_extraction.extract_brain(_image_of(volume[names.index(source)], grid))
        brain = sitk.GetArrayFromImage(mask).transpose(2, 1, 0) != 0
        volume[:, ~brain] = 0
        timings["brain_extraction_s"] = time.perf_counter() - t0
        extraction.update({"done": "deepbet", "from": source, "erosion_mm": brain_extraction.EROSION_MM})
        progress("brain_extraction", 1, 1)
    if brain is not None:
        extraction["brain_ml"] = round(float(brain.sum()) * float(np.prod(grid.GetSpacing())) / 1000.0, 1)
        reason = brain_extraction.plausible_brain(extraction["brain_ml"])
        if reason:
            warnings.append(case_warnings.not_a_brain(reference, reason))
    report["brain_extraction"] = extraction
    warnings += case_warnings.channel_warnings(volume, names, brain)
    tissue = np.any(volume != 0, axis=0)
    return Prepared(volume, grid, tissue, brain, report, warnings, timings)
