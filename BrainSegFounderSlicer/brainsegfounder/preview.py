"""PNG previews: a few axial, coronal and sagittal slices of each modality, labels overlaid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import UserError
from .imageio import read_volume

# BraTS colours by label value (2021 and 2023 numbering), lesion = 1
LABEL_COLORS = {1: (0.85, 0.15, 0.15), 2: (0.30, 0.75, 0.30), 3: (0.95, 0.85, 0.20), 4: (0.95, 0.85, 0.20)}


def _radiological(image: sitk.Image) -> np.ndarray:
    """(z, y, x) array with x = patient left on screen right, y = anterior at top, z = superior up."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def draw_preview(images: Dict[str, sitk.Image], path: os.PathLike, labels: Optional[sitk.Image] = None) -> None:
    """Write the PNG to ``path`` directly (callers make it atomic)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("PNG previews need matplotlib: pip install matplotlib") from None
    arrays = {name: _radiological(im) for name, im in images.items()}
    label_array = _radiological(labels) if labels is not None else None
    reference = next(iter(arrays.values()))
    focus = label_array if label_array is not None and label_array.any() else reference
    z, y, x = (round(c) for c in np.argwhere(focus > 0).mean(axis=0))
    spacing = np.array(next(iter(images.values())).GetSpacing())  # (x, y, z), same for all after LPS
    views = [
        ("axial", lambda a: a[z], spacing[1] / spacing[0]),
        ("coronal", lambda a: a[::-1, y], spacing[2] / spacing[0]),
        ("sagittal", lambda a: a[::-1, :, x], spacing[2] / spacing[1]),
    ]
    fig, axes = plt.subplots(len(views), len(arrays), figsize=(2.6 * len(arrays), 2.6 * len(views)), squeeze=False)
    for col, (name, array) in enumerate(arrays.items()):
        high = np.percentile(array[array > 0], 99.5) if np.any(array > 0) else 1
        for row, (_, cut, aspect) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(cut(array), cmap="gray", vmin=0, vmax=high, aspect=aspect, interpolation="nearest")
            if label_array is not None and col == len(arrays) - 1:
                lab = cut(label_array)
                overlay = np.zeros((*lab.shape, 4))
                for value, color in LABEL_COLORS.items():
                    overlay[lab == value] = (*color, 0.45)
                ax.imshow(overlay, aspect=aspect, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)


def save_preview(images: Dict[str, sitk.Image], path: os.PathLike, labels: Optional[sitk.Image] = None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        draw_preview(images, tmp, labels)
    return path


def save_preview_from_files(inputs, path: os.PathLike, labels: Optional[os.PathLike] = None) -> Path:
    """Preview of ``[(modality, image path)]`` with the label map file overlaid."""
    images = {name: read_volume(p, f"input {name}") for name, p in inputs}
    # Labels are read without input checks: an empty label map is a valid result.
    return save_preview(images, path, sitk.ReadImage(str(labels)) if labels else None)
