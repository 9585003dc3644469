"""Hospital-like versions of synthetic cases: motion between sequences, thick slices, skull.

Used to test and measure preprocessing (model_space.py). The skull and scalp come from a real
head, Colin27 (`ch2` and its brain `ch2bet`, in Debian's mricron-data package; BSD-3 with the
MNI copyright notice), pasted around the synthetic brain.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

COLIN27_DIR = Path("/usr/share/mricron/templates")
COLIN27_HINT = "Colin27 comes with Debian's mricron-data: apt-get install mricron-data"
# Motion of each contrast against the FLAIR in write_hospital_case: (turns in degrees, shifts in mm)
MOTIONS = {"t1ce": ((3, -2, 3.5), (3, -2, 2)), "t1": ((-2, 2, -3), (-2, 3, -1.5)), "t2": ((2, 3, -2), (2.5, 1, -3))}
# Scalp and skull brightness relative to the brain's median, per contrast: fat is bright on
# T1 and T2, dimmer on FLAIR; cortical bone is dark everywhere (Colin27's T1 has it so).
SCALP_GAIN = {"t1": 1.1, "t1ce": 1.1, "flair": 0.8, "t2": 1.0}


def colin27() -> Optional[Tuple[sitk.Image, sitk.Image]]:
    """(head, brain) of Colin27, or None where mricron-data is not installed."""
    head, brain = COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz"
    if not (head.is_file() and brain.is_file()):
        return None
    return sitk.ReadImage(str(head), sitk.sitkFloat32), sitk.ReadImage(str(brain), sitk.sitkFloat32)


def rigid(center, angles_deg: Sequence[float], shift_mm: Sequence[float]) -> sitk.Euler3DTransform:
    """A rigid transform about ``center`` (physical point)."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in center))
    transform.SetRotation(*(math.radians(a) for a in angles_deg))
    transform.SetTranslation(tuple(float(v) for v in shift_mm))
    return transform


def center_of(image: sitk.Image):
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def moved(image: sitk.Image, transform: sitk.Transform, grid: Optional[sitk.Image] = None) -> sitk.Image:
    """``image`` as the scanner sees it after the head moved: the point ``p`` of the original lies
    at ``transform(p)`` (so registering the result back recovers ``transform``)."""
    grid = grid if grid is not None else image
    # cubic: a scanner images the moved head as sharply as the still one (linear would blur it)
    sharp = sitk.Resample(image, grid, transform.GetInverse(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    support = sitk.Resample(image, grid, transform.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32) > 0
    return sitk.Mask(sitk.Clamp(sharp, lowerBound=0.0), support)


def thick_grid(image: sitk.Image, thickness_mm: float, axis: int = 2) -> sitk.Image:
    """A grid over ``image``'s extent with slices ``thickness_mm`` thick along index ``axis``."""
    spacing = list(image.GetSpacing())
    size = list(image.GetSize())
    extent = size[axis] * spacing[axis]
    size[axis] = max(1, round(extent / thickness_mm))
    spacing[axis] = float(thickness_mm)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (np.asarray(image.GetSpacing()) / 2)
    grid.SetOrigin(tuple(corner + direction @ (np.asarray(spacing) / 2)))
    return grid


def slice_profile(image: sitk.Image, thickness_mm: float, axis: int = 2) -> sitk.Image:
    """``image`` blurred along ``axis`` as a slice of ``thickness_mm`` integrates it (Gaussian, same FWHM)."""
    variance = [0.0, 0.0, 0.0]
    variance[axis] = (thickness_mm / 2.355) ** 2
    return sitk.DiscreteGaussian(image, variance, 32, 0.01, True)


def with_skull(images: Dict[str, sitk.Image], seed: int = 0) -> Dict[str, sitk.Image]:
    """The skull-stripped ``images`` (one grid) inside Colin27's skull and scalp. Between the
    synthetic brain and Colin27's skull the gap is filled with each contrast's CSF-like rim value."""
    from scipy import ndimage

    head_brain = colin27()
    if head_brain is None:
        raise FileNotFoundError(COLIN27_HINT)
    reference = next(iter(images.values()))
    head, brain = (
        sitk.GetArrayFromImage(sitk.Resample(im, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        for im in head_brain
    )
    ours = sitk.GetArrayViewFromImage(reference) != 0
    inside = ndimage.binary_dilation(ours | (brain > 0), iterations=1)
    outside = (head > 0) & ~inside
    rim = ours & ~ndimage.binary_erosion(ours, iterations=2)
    colin_median = float(np.median(head[brain > 0]))
    rng = np.random.default_rng(seed)
    out = {}
    for name, image in images.items():
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        median = float(np.median(array[ours]))
        gain = SCALP_GAIN.get(name, 1.0) * median / colin_median
        filled = np.where(inside & ~ours, np.median(array[rim]), array)
        filled = np.where(outside, head * gain, filled)
        # the scanner's noise floor: a raw scan has no exact zeros outside the head
        filled += np.abs(rng.normal(0, 0.01 * median, filled.shape)).astype(np.float32)
        result = sitk.GetImageFromArray(filled)
        result.CopyInformation(image)
        out[name] = result
    return out


def write_hospital_case(out: Path, spacing: float, seed: int = 777, thickness_mm: float = 5.0):
    """A synthetic BraTS case as a hospital gives it: clean/ (the case, one grid, no skull) and
    hospital/ (in Colin27's skull, T1ce / T1 / T2 moved by MOTIONS, the FLAIR with ``thickness_mm``
    slices). Returns (clean inputs, hospital inputs, ground truth path), modality -> Path."""
    from .cohort import case_files, write_cohort

    out = Path(out)
    root = out / "clean"
    if not (root / "datalist.json").exists():
        write_cohort(root, kind="brats", n=1, seed=seed, spacing=spacing, folds=1)
    _, images, label = case_files("brats2021", 0)
    clean = {m: root / p for m, p in images.items()}
    heads = with_skull({m: sitk.ReadImage(str(p), sitk.sitkFloat32) for m, p in clean.items()})
    center = center_of(heads["flair"])
    folder = out / "hospital"
    folder.mkdir(parents=True, exist_ok=True)
    scans = {}
    for name, image in heads.items():
        if name == "flair":
            image = sitk.Resample(slice_profile(image, thickness_mm), thick_grid(image, thickness_mm))
        else:
            image = moved(image, rigid(center, *MOTIONS[name]))
        scans[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(scans[name]))
    return clean, scans, root / label
