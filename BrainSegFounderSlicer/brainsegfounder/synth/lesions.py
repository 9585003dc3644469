"""Lesions drawn into a subject: gliomas (necrotic core, enhancing rim, edema along white
matter) and ischaemic stroke lesions (in one arterial territory's grey and white matter)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import smooth_noise
from .subject import Subject


@dataclass
class Tumour:
    necrosis: np.ndarray  # bool masks on the subject grid
    enhancing: np.ndarray
    edema: np.ndarray


def _physical_coordinates(shape, spacing):
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"))


def _ellipsoid_radius(rng, coords, center, radii):
    """Normalised radius of a randomly rotated ellipsoid: < 1 inside."""
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    offset = coords - np.asarray(center).reshape(3, 1, 1, 1)
    rotated = np.tensordot(q, offset, axes=1)
    return np.sqrt(sum((rotated[i] / radii[i]) ** 2 for i in range(3)))


def _pick_center(rng, allowed: np.ndarray) -> np.ndarray:
    """A random voxel of ``allowed`` (array index), or the brain centre if it is empty."""
    idx = np.argwhere(allowed)
    return idx[rng.integers(len(idx))].astype(float)


def push_tissue(subject: Subject, center_mm: np.ndarray, radius: float, strength: float, local: bool = False) -> None:
    """Mass effect: tissue around the tumour pushed outward (ventricles and sulci compressed).

    Each voxel samples the tissue maps at c + (x - c) * (1 - strength * exp(-r^2 / 2 sigma^2)),
    a radial map that stays one-to-one for strength < 1; the brain outline is kept. ``local``
    moves only the voxels within 3.5 sigma of the centre (the rest would move by under 0.3% of
    their distance, 0.15 mm at most): far faster at 1 mm.
    """
    spacing = np.array(subject.spacing)
    sigma = 1.6 * radius
    box = tuple(slice(None) for _ in spacing)
    if local:
        low = np.maximum(np.floor((center_mm - 3.5 * sigma) / spacing).astype(int), 0)
        high = np.ceil((center_mm + 3.5 * sigma) / spacing).astype(int) + 1
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    region = subject.brain[box]
    start = np.array([s.start or 0 for s in box])
    coords = _physical_coordinates(region.shape, spacing) + (start * spacing).reshape(3, 1, 1, 1)
    offset = coords - center_mm.reshape(3, 1, 1, 1)
    r2 = (offset**2).sum(axis=0)
    scale = 1 - strength * np.exp(-r2 / (2 * sigma**2))
    sample = (center_mm.reshape(3, 1, 1, 1) + offset * scale) / spacing.reshape(3, 1, 1, 1)
    moved = {
        name: ndimage.map_coordinates(subject.tissues[name], sample, order=1, mode="nearest").astype(np.float32)
        * region
        for name in ("gm", "wm", "csf")
    }
    for name, values in moved.items():
        subject.tissues[name][box] = values
    subject.tissues["csf"][box] += np.where(region, np.clip(1 - sum(moved.values()), 0, 1), 0)


def add_tumour(rng: np.random.Generator, subject: Subject) -> Tumour:
    spacing = np.array(subject.spacing)
    shape = subject.brain.shape
    depth = ndimage.distance_transform_edt(subject.brain, sampling=spacing)
    wm = subject.tissues["wm"]
    radius = rng.uniform(9, 22)  # mm, tumour core
    allowed = (wm > 0.5) & (depth > radius + 8)
    if not allowed.any():
        allowed = depth >= depth.max() * 0.6
    center = _pick_center(rng, allowed) * spacing
    push_tissue(subject, center, radius, strength=rng.uniform(0.2, 0.45))
    wm = subject.tissues["wm"]
    coords = _physical_coordinates(shape, spacing)
    rho = _ellipsoid_radius(rng, coords, center, radius * rng.uniform(0.75, 1.25, 3))
    rho = rho * (1 + 0.18 * smooth_noise(rng, shape, coarse=8))  # irregular margin
    core = (rho < 1) & subject.brain
    necrosis_fraction = rng.uniform(0.35, 0.75) if rng.random() > 0.15 else 0.0
    rim_noise = 0.08 * smooth_noise(rng, shape, coarse=10)
    necrosis = core & (rho < necrosis_fraction + rim_noise)
    enhancing = core & ~necrosis
    # Edema spreads from the core along white matter: far where WM is dense, little elsewhere.
    reach = rng.uniform(8, 25)  # mm
    distance = ndimage.distance_transform_edt(~core, sampling=spacing)
    wm_smooth = ndimage.gaussian_filter(wm, 1.0)
    edema = (
        (distance < reach * (0.15 + 1.0 * wm_smooth) * (1 + 0.25 * smooth_noise(rng, shape, coarse=8)))
        & subject.brain
        & ~core
    )
    edema = ndimage.binary_opening(edema, iterations=1)
    return Tumour(necrosis=necrosis, enhancing=enhancing, edema=edema)


def add_stroke(rng: np.random.Generator, subject: Subject) -> np.ndarray:
    """A chronic infarct: a lobulated blob in one hemisphere's grey/white matter."""
    spacing = np.array(subject.spacing)
    shape = subject.brain.shape
    parenchyma = (subject.tissues["gm"] + subject.tissues["wm"]) > 0.5
    # Array axes are (z, y, x); x runs across the hemispheres whatever the grid's letters.
    x_mid = np.argwhere(subject.brain)[:, 2].mean()
    side = rng.choice([-1, 1])
    x = np.arange(shape[2])[None, None, :]
    hemisphere = side * (x - x_mid) > 6 / spacing[2]
    coords = _physical_coordinates(shape, spacing)
    lesion = np.zeros(shape, bool)
    base = _pick_center(rng, parenchyma & hemisphere) * spacing
    for _ in range(rng.integers(1, 4)):
        center = base + rng.normal(0, 6, 3)
        radii = rng.uniform(4, 16) * rng.uniform(0.6, 1.4, 3)
        lesion |= _ellipsoid_radius(rng, coords, center, radii) * (1 + 0.15 * smooth_noise(rng, shape, 8)) < 1
    return lesion & parenchyma & hemisphere
