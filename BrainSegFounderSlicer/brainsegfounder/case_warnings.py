"""Warnings a radiologist can act on: one line each, in the summary, the CLI output and the panel.

None is fatal: the segmentation is written, and the warning says what to check.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

# Slices more than this many times thicker than they are wide: the model, trained on isotropic
# voxels, sees interpolated slices (BraTS's own scans were as thick, but resampled and checked).
THICK_RATIO = 3.0
# Patients move a few mm between sequences of one session; a registration that moved a contrast's
# head further on average, or turned it more, probably matched the wrong structures. (A 5 degree
# turn with 4 mm of shift, recovered to 0.1 mm here, moves the head 6-7 mm on average, 14-16 at its rim.)
MAX_MOVE_MM = 15.0
MAX_TURN_DEG = 15.0
# Two inputs this correlated inside the brain are the same scan given twice.
SAME_SCAN_CORRELATION = 0.995
# A result is implausible when its whole tumour fills more than this fraction of the brain, or
# when more than this fraction of what the model labelled lay outside the brain (and was dropped).
MAX_TUMOUR_FRACTION = 0.5
MAX_OUTSIDE_FRACTION = 0.05


def _mm(spacing) -> str:
    return "x".join(f"{float(v):.3g}" for v in spacing) + " mm"


def input_warnings(images: Dict[str, sitk.Image]) -> List[str]:
    """Thick slices, per input."""
    out = []
    for name, image in images.items():
        spacing = np.asarray(image.GetSpacing(), float)
        ratio = spacing.max() / spacing.min()
        if ratio > THICK_RATIO:
            out.append(
                f"thick slices: {name} has {_mm(spacing)} voxels ({ratio:.1f} times thicker than wide); the model "
                "sees interpolated slices, so small lesions between slices may be missed: check them on the scan"
            )
    return out


def registration_warnings(name: str, reference: str, result) -> List[str]:
    """A contrast that did not co-register (poor metric after registration, or moved too far)."""
    from .registration import POOR_METRIC

    why = []
    if result.metric_after > POOR_METRIC:
        why.append(f"poor match after registration (mutual information {result.metric_after:.2f})")
    if result.shift_mm_mean > MAX_MOVE_MM or result.rotation_deg > MAX_TURN_DEG:
        why.append(
            f"it moved {result.shift_mm_mean:.0f} mm on average and turned {result.rotation_deg:.0f} degrees, "
            f"more than the {MAX_MOVE_MM:.0f} mm / {MAX_TURN_DEG:.0f} degrees patients move between sequences"
        )
    if not why:
        return []
    return [
        f"{name} may not have co-registered with {reference}: {'; '.join(why)}; check the overlay "
        "(--qc FILE.png) or give a scan of the same session"
    ]


def not_a_brain(reference: str, reason: str) -> str:
    return (
        f"{reference} may not be a brain scan: {reason}; check that the inputs are head MRI (the whole "
        "brain in the field of view)"
    )


def channel_warnings(volume: np.ndarray, names: Sequence[str], brain: Optional[np.ndarray]) -> List[str]:
    """Missing (no signal) and duplicated (the same scan twice) sequences, from the model-space arrays."""
    out = []
    inside = brain if brain is not None and brain.any() else np.any(volume != 0, axis=0)
    values = volume[:, inside] if inside.any() else volume.reshape(len(names), -1)
    spread = values.std(axis=1)
    for name, s in zip(names, spread, strict=True):
        if s == 0:
            out.append(
                f"missing sequence: {name} holds no signal inside the brain (a constant image); give the {name} "
                "scan, the model reads every input"
            )
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if spread[i] == 0 or spread[j] == 0:
                continue
            r = float(np.corrcoef(values[i], values[j])[0, 1])
            if r > SAME_SCAN_CORRELATION:
                out.append(
                    f"duplicated sequence: {names[i]} and {names[j]} are the same scan (correlation {r:.3f} inside "
                    "the brain); give each contrast its own series"
                )
    return out


def result_warnings(
    tumour_ml: Optional[float], brain_ml: Optional[float], outside_fraction: float, name: str = "whole tumour"
) -> List[str]:
    """An implausible result: the tumour over half the brain, labels outside the brain mask."""
    out = []
    if tumour_ml is not None and brain_ml and tumour_ml > MAX_TUMOUR_FRACTION * brain_ml:
        out.append(
            f"implausible result: the {name} ({tumour_ml:.0f} mL) fills {tumour_ml / brain_ml:.0%} of the brain "
            f"({brain_ml:.0f} mL); check the inputs' contrasts and the segmentation before using it"
        )
    if outside_fraction > MAX_OUTSIDE_FRACTION:
        out.append(
            f"implausible result: {outside_fraction:.0%} of what the model labelled lay outside the brain and was "
            "dropped; the inputs may not match what the model was trained on (skull, another contrast)"
        )
    return out
