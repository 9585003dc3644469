"""Geometry: put all inputs on the reference grid in physical space, and orient for the network.

Inputs on other grids are resampled (linear) onto the reference modality's grid through their
physical coordinates, so direction cosines (RAS, LPS, oblique) are honoured. Outside an
input's extent its channel is zero, i.e. missing for the network: an input that covers less than
half the reference's brain is an error, less than nine tenths a note. Grids that already match
are left alone.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from .errors import UserError

SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-5
# Coverage of the reference's brain (its nonzero voxels) by a resampled input. Below half, most
# of the brain would be segmented without that input: a different input set than the model's,
# refused. Below nine tenths, a tenth or more of the brain (a few cm of a slab that clips the
# vertex or the cerebellum) lacks it: segmented, with a note. Above, edge slices only.
MIN_COVERAGE = 0.5
WARN_COVERAGE = 0.9


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=0)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_ATOL_MM)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_ATOL)
    )


def coverage(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference's foreground (nonzero voxels: the brain of a skull-stripped scan)
    that falls inside ``moving``'s extent; of all its voxels where it has no foreground. Counting
    the whole grid would let a scan that misses the brain but covers empty corners pass."""
    inside = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(moving)
    mapped_image = sitk.Resample(inside, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mapped = sitk.GetArrayViewFromImage(mapped_image)  # a view: valid while mapped_image lives
    foreground = sitk.GetArrayViewFromImage(reference) != 0
    total = np.count_nonzero(foreground)
    if not total:
        return float(mapped.mean())
    return np.count_nonzero(mapped[foreground]) / total


def percent(fraction: float) -> str:
    """Rounded down, so a coverage just under a threshold never reads as the threshold."""
    return "under 1%" if 0 < fraction < 0.01 else f"{math.floor(fraction * 100)}%"


def resample_with_coverage(
    moving: sitk.Image,
    reference: sitk.Image,
    label: str,
    min_coverage: float = MIN_COVERAGE,
    reference_label: str = "the reference image",
) -> Tuple[sitk.Image, bool, float]:
    """``moving`` on ``reference``'s grid (linear); returns (image, was_resampled, coverage).
    Refused where it covers less than ``min_coverage`` of the reference's brain."""
    if same_grid(moving, reference):
        return moving, False, 1.0
    covered = check_coverage(moving, reference, label, min_coverage, reference_label)
    image = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return image, True, covered


def check_coverage(
    moving: sitk.Image,
    reference: sitk.Image,
    label: str,
    min_coverage: float = MIN_COVERAGE,
    reference_label: str = "the reference image",
) -> float:
    """The fraction of the reference's brain ``moving`` covers; refused below ``min_coverage``."""
    if same_grid(moving, reference):
        return 1.0
    covered = coverage(moving, reference)
    if covered == 0:
        raise UserError(
            f"{label} does not overlap the reference image in physical space "
            "(0% of it covered); check that all inputs are scans of the same patient "
            "session with correct origins"
        )
    if covered < min_coverage:
        raise UserError(
            f"{label} covers {percent(covered)} of {reference_label}'s brain (its nonzero voxels) in "
            f"physical space, less than the {percent(min_coverage)} needed; check that all inputs are scans "
            "of the same patient session with correct origins, or give a scan of the whole brain"
        )
    return covered


def resample_to(
    moving: sitk.Image, reference: sitk.Image, label: str, min_coverage: float = MIN_COVERAGE
) -> Tuple[sitk.Image, bool]:
    """``moving`` on ``reference``'s grid (linear); returns (image, was_resampled)."""
    image, resampled, _ = resample_with_coverage(moving, reference, label, min_coverage)
    return image, resampled


def orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """Permute/flip axes (no interpolation) so the index axes run as ``code`` says, e.g. "LPS"."""
    if orientation_code(image) == code:
        return image
    return sitk.DICOMOrient(image, code)


def voxel_volume_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


# Voxel sizes within this fraction of a model's are taken as its own (no resampling): 0.94 mm
# in-plane, common in clinical 1 mm protocols, is not worth a round trip through interpolation.
MODEL_SPACING_RTOL = 0.05


def grid_at_spacing(image: sitk.Image, spacing) -> sitk.Image:
    """An empty image covering ``image``'s extent (same direction, same outer corners up to a
    voxel) with voxels of ``spacing`` mm along its index axes."""
    old = np.asarray(image.GetSpacing(), float)
    new = np.asarray(spacing, float)
    size = np.maximum(1, np.ceil(np.asarray(image.GetSize()) * old / new - 1e-6)).astype(int)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    corner = np.asarray(image.GetOrigin(), float) - direction @ (old / 2)  # outer corner of voxel 0
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing([float(v) for v in new])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin([float(v) for v in corner + direction @ (new / 2)])
    return grid


def needs_model_spacing(image: sitk.Image, spacing) -> bool:
    """Whether ``image``'s voxels differ from ``spacing`` (a model's) by more than MODEL_SPACING_RTOL."""
    if spacing is None:
        return False
    return not np.allclose(image.GetSpacing(), spacing, rtol=MODEL_SPACING_RTOL, atol=0)


def resample_linear(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """``image`` on ``grid`` (linear interpolation, float32, zero outside its extent)."""
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def oriented_spacing(path, orientation: str) -> Tuple[float, float, float]:
    """Voxel size of an image file along the index axes of ``orientation`` (header only)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)  # the header's geometry on two voxels a side
    probe.SetSpacing(reader.GetSpacing())
    probe.SetDirection(reader.GetDirection())
    return tuple(float(v) for v in reorient(probe, orientation).GetSpacing())
