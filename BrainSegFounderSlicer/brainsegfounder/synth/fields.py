"""Smooth random fields, the raw material of deformations, bias and texture."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], coarse: int = 6) -> np.ndarray:
    """Zero-mean, unit-variance noise that varies over about ``1/coarse`` of the volume."""
    from scipy.ndimage import zoom

    small = rng.standard_normal([coarse] * len(shape))
    # Cubic up to a quarter of the size, then linear: smooth, and far cheaper than cubic at full size.
    middle = [max(coarse, s // 4) for s in shape]
    field = zoom(small, [m / coarse for m in middle], order=3, mode="nearest")
    field = zoom(
        field.astype(np.float32),
        [s / m for s, m in zip(shape, field.shape, strict=True)],
        order=1,
        mode="nearest",
        grid_mode=False,
    )[tuple(slice(0, s) for s in shape)]
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float) -> np.ndarray:
    """Multiplicative, slowly varying intensity non-uniformity, exp(strength * noise)."""
    return np.exp(strength * smooth_noise(rng, shape, coarse=3)).astype(np.float32)
