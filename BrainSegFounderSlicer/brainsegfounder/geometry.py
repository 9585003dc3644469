"""Geometry: put all inputs on the reference grid in physical space, and orient for the network.

Inputs on other grids are resampled (linear) onto the reference modality's grid through their
physical coordinates, so direction cosines (RAS, LPS, oblique) are honoured; an input that
does not overlap the reference in space is an error. Grids that already match are left alone.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk

from .errors import UserError

SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-5


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=SPACING_RTOL, atol=0)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_ATOL_MM)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_ATOL)
    )


def coverage(moving: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference grid's voxels that fall inside ``moving``'s extent."""
    inside = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(moving)
    mapped = sitk.Resample(inside, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(mapped).mean())


def resample_to(
    moving: sitk.Image, reference: sitk.Image, label: str, min_coverage: float = 0.0
) -> Tuple[sitk.Image, bool]:
    """``moving`` on ``reference``'s grid (linear); returns (image, was_resampled)."""
    if same_grid(moving, reference):
        return moving, False
    covered = coverage(moving, reference)
    if covered <= min_coverage:
        raise UserError(
            f"{label} does not overlap the reference image in physical space "
            f"({covered:.0%} of it covered); check that all inputs are scans of the same patient "
            "session with correct origins"
        )
    return sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32), True


def orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """Permute/flip axes (no interpolation) so the index axes run as ``code`` says, e.g. "LPS"."""
    if orientation_code(image) == code:
        return image
    return sitk.DICOMOrient(image, code)


def voxel_volume_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0
