"""The preprocessing QC picture (``segment --qc FILE.png``), on the grid the model ran on.

Left column: the reference contrast in grey, the edges of every other co-registered contrast in
its own colour (edges that fall on the reference's structures mean the registration held) and
the brain mask's outline. Right column: the reference with the result. Rows: axial, coronal,
sagittal slices through the result (or the brain's centre).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .preview import LABEL_COLORS, _radiological

EDGE_COLORS = ((0.1, 0.8, 1.0), (1.0, 0.5, 0.0), (1.0, 0.2, 0.9), (0.4, 1.0, 0.3))
EDGE_PERCENTILE = 90  # the strongest tenth of each contrast's gradients inside the head


def _on(array: np.ndarray, grid: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return _radiological(image)


def _edges(array: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    magnitude = ndimage.gaussian_gradient_magnitude(array.astype(np.float32), 1.0)
    # inside the head only: its outer border is the brain mask's where the skull was stripped
    inside = ndimage.binary_erosion(array != 0, iterations=2)
    strong = magnitude > (np.percentile(magnitude[inside], EDGE_PERCENTILE) if inside.any() else np.inf)
    return strong & inside


def draw_qc(
    path: os.PathLike,
    volume: np.ndarray,
    names: Sequence[str],
    reference: str,
    grid: sitk.Image,
    brain: Optional[np.ndarray],
    labels: Optional[sitk.Image],
) -> None:
    """Write the QC PNG to ``path`` (callers make it atomic). ``volume`` (C, i, j, k) is on ``grid``;
    ``labels`` on any grid (resampled onto ``grid``, nearest)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the QC picture needs matplotlib: pip install matplotlib") from None
    ref = _on(volume[list(names).index(reference)], grid)
    others = [(n, _on(_edges(volume[i]).astype(np.uint8), grid)) for i, n in enumerate(names) if n != reference]
    mask = _on(brain.astype(np.uint8), grid) if brain is not None else None
    lab = None
    if labels is not None:
        on_grid = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        lab = _radiological(on_grid)
    focus = lab if lab is not None and lab.any() else (mask if mask is not None and mask.any() else ref)
    z, y, x = (round(c) for c in np.argwhere(focus > 0).mean(axis=0)) if focus.any() else np.array(ref.shape) // 2
    sp = np.array(sitk.DICOMOrient(grid, "LPS").GetSpacing())
    views = [
        ("axial", lambda a: a[z], sp[1] / sp[0]),
        ("coronal", lambda a: a[::-1, y], sp[2] / sp[0]),
        ("sagittal", lambda a: a[::-1, :, x], sp[2] / sp[1]),
    ]
    high = np.percentile(ref[ref > 0], 99.5) if np.any(ref > 0) else 1
    fig, axes = plt.subplots(len(views), 2, figsize=(7.0, 3.4 * len(views)), squeeze=False)
    for row, (_, cut, aspect) in enumerate(views):
        for col in range(2):
            ax = axes[row, col]
            ax.imshow(cut(ref), cmap="gray", vmin=0, vmax=high, aspect=aspect, interpolation="nearest")
            ax.set_axis_off()
        left, right = axes[row]
        for (name, edges), color in zip(others, EDGE_COLORS, strict=False):
            e = cut(edges)
            overlay = np.zeros((*e.shape, 4))
            overlay[e > 0] = (*color, 0.8)
            left.imshow(overlay, aspect=aspect, interpolation="nearest")
            if row == 0:
                left.plot([], [], color=color, label=f"{name} edges")
        if mask is not None and cut(mask).any():
            left.contour(cut(mask), levels=[0.5], colors="yellow", linewidths=0.8)
            if row == 0:
                left.plot([], [], color="yellow", label="brain mask")
        if lab is not None:
            cut_lab = cut(lab)
            overlay = np.zeros((*cut_lab.shape, 4))
            for value, color in LABEL_COLORS.items():
                overlay[cut_lab == value] = (*color, 0.5)
            right.imshow(overlay, aspect=aspect, interpolation="nearest")
    axes[0, 0].set_title(f"{reference} (reference)", fontsize=9)
    axes[0, 1].set_title("result", fontsize=9)
    if others or mask is not None:
        axes[0, 0].legend(loc="lower left", fontsize=6, framealpha=0.6)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
