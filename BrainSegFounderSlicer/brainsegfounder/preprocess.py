"""Intensity normalisation and cropping to the brain, as the network was trained.

Arrays here are channel-first in index order (C, i, j, k): the order MONAI's image loaders
give and BrainSegFounder's networks were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

NORMALIZATIONS = ("zscore_nonzero",)


def normalize(volume: np.ndarray, method: str = "zscore_nonzero") -> np.ndarray:
    """Per-channel z-score over the brain (nonzero) voxels; background stays 0."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}")
    from monai.transforms import NormalizeIntensity

    return np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True, dtype=np.float32)(volume))


@dataclass(frozen=True)
class BrainBox:
    """The brain's bounding box (with margin) inside a volume of ``shape``."""

    start: Tuple[int, ...]
    end: Tuple[int, ...]
    shape: Tuple[int, ...]

    @classmethod
    def of(cls, volume: np.ndarray, margin: int = 4) -> "BrainBox":
        """Box around voxels nonzero in any channel of ``volume`` (C, ...)."""
        from monai.transforms.utils import generate_spatial_bounding_box

        spatial = volume.shape[1:]
        start, end = generate_spatial_bounding_box(volume, select_fn=lambda x: x != 0, margin=margin)
        # MONAI does not clip the margin to the volume
        start = [max(0, int(s)) for s in start]
        end = [min(n, int(e)) for e, n in zip(end, spatial, strict=True)]
        if any(e <= s for s, e in zip(start, end, strict=True)):  # nothing nonzero: keep everything
            start, end = [0] * len(spatial), list(spatial)
        return cls(tuple(int(s) for s in start), tuple(int(e) for e in end), tuple(spatial))

    @property
    def slices(self) -> Tuple[slice, ...]:
        return tuple(slice(s, e) for s, e in zip(self.start, self.end, strict=True))

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Crop the spatial (last three) axes."""
        return array[(Ellipsis, *self.slices)]

    def paste(self, cropped: np.ndarray, fill=0) -> np.ndarray:
        """Put ``cropped`` back into a full-size array (leading axes kept)."""
        full = np.full(cropped.shape[:-3] + self.shape, fill, dtype=cropped.dtype)
        full[(Ellipsis, *self.slices)] = cropped
        return full

    @property
    def fraction(self) -> float:
        return float(np.prod([e - s for s, e in zip(self.start, self.end, strict=True)]) / np.prod(self.shape))
