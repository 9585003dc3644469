"""What a scanner and the preprocessing do to an ideal image: bias field, residual
misregistration against the reference contrast, thick-slice acquisition resampled back to the
grid, and Rician noise."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .fields import bias_field, smooth_noise


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise of ``sigma`` in each channel."""
    shape = image.shape
    return np.sqrt((image + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)


def biased(rng: np.random.Generator, image: np.ndarray, varied: bool) -> np.ndarray:
    """Multiply by a bias field: 5-15% (classic), or 8-22% over two to four lobes (a standard
    deviation; uncorrected 3 T brains span about a factor 1.5-2 end to end)."""
    if not varied:
        return image * bias_field(rng, image.shape, strength=rng.uniform(0.05, 0.15))
    strength = rng.uniform(0.08, 0.22)
    return image * np.exp(strength * smooth_noise(rng, image.shape, coarse=int(rng.integers(2, 5)))).astype(np.float32)


def noise_sigma(rng: np.random.Generator, wm_signal: float, varied: bool) -> float:
    """Noise level: SNR of white matter 30-65 (classic) or 12-100 (clean 3D to noisy fast 2D)."""
    return float(rng.uniform(0.01, 0.08) if varied else rng.uniform(0.015, 0.035)) * wm_signal


def misregistered(rng: np.random.Generator, image: np.ndarray, grid: sitk.Image, center_mm) -> np.ndarray:
    """The image moved by a small rigid transform (up to 1 degree and 1 mm per axis) about the
    brain centre: what co-registration leaves between contrasts of one session."""
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(float(c) for c in center_mm))
    euler.SetRotation(*np.deg2rad(rng.uniform(-1, 1, 3)))
    euler.SetTranslation(tuple(rng.uniform(-1, 1, 3)))
    source = sitk.GetImageFromArray(image.astype(np.float32))
    source.CopyInformation(grid)
    return sitk.GetArrayFromImage(sitk.Resample(source, grid, euler, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def thick_slice_plans(rng: np.random.Generator, modalities, spacing: float) -> Dict[str, Tuple[int, int]]:
    """{modality: (array axis, voxels per acquired slice)} of the contrasts acquired in 2D.

    2D FLAIR and T2 are common (thick axial slices, sometimes coronal or sagittal); T1 and T1ce
    are more often 3D. Slices of 3-6 mm; at least one contrast of a case is 2D, so that the
    switch always shows.
    """
    plans = {}
    for modality in modalities:
        step = max(2, round(rng.uniform(3, 6) / spacing))
        axis = int(rng.choice([0, 1, 2], p=[0.7, 0.15, 0.15]))  # (z, y, x): axial mostly
        if rng.random() < (0.6 if modality in ("flair", "t2") else 0.25):
            plans[modality] = (axis, step)
    if not plans:
        first = next((m for m in modalities if m in ("flair", "t2")), modalities[0])
        plans[first] = (0, max(2, round(rng.uniform(3, 6) / spacing)))
    return plans


def thick_slices(
    rng: np.random.Generator, image: np.ndarray, axis: int, step: int, sigma: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Acquire ``image`` in slabs of ``step`` voxels along ``axis`` (each slice averages its slab),
    add noise per acquired slice, and interpolate back linearly: blur and stair-steps across the
    slices, as a 5 mm FLAIR resampled to 1 mm. Returns the image and its acquired slice positions."""
    n = image.shape[axis]
    slab = ndimage.uniform_filter1d(image, step, axis=axis, mode="nearest")
    positions = np.arange(int(rng.integers(step)), n, step)
    if len(positions) < 2:
        positions = np.array([0, n - 1])
    acquired = rician(rng, np.take(slab, positions, axis=axis), sigma)
    index = np.arange(n)
    left = np.clip(np.searchsorted(positions, index, side="right") - 1, 0, len(positions) - 2)
    weight = np.clip((index - positions[left]) / (positions[left + 1] - positions[left]), 0, 1)
    shape = [1, 1, 1]
    shape[axis] = n
    weight = weight.reshape(shape).astype(np.float32)
    low, high = np.take(acquired, left, axis=axis), np.take(acquired, left + 1, axis=axis)
    return (low * (1 - weight) + high * weight).astype(np.float32), positions
