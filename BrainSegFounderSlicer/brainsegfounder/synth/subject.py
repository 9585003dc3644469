"""One subject's anatomy: the template deformed by a random affine and smooth warp, on an
output grid of the data set's layout."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .anatomy import Template, load_template
from .fields import smooth_noise

TISSUES = ("gm", "wm", "csf")


@dataclass(frozen=True)
class GridSpec:
    """An output grid: its size at 1 mm and its orientation (ITK letters)."""

    size_1mm: Tuple[int, int, int]
    orientation: str  # "LPS" (BraTS files) or "RAS" (MNI / ATLAS files)
    # Output-to-template scaling; above 1 shrinks the brain. BraTS' 155 mm field of view
    # needs brains no taller than the template's.
    scale_range: Tuple[float, float] = (0.92, 1.08)

    def make(self, spacing: float, center: Sequence[float]) -> sitk.Image:
        size = [max(8, round(s / spacing)) for s in self.size_1mm]
        grid = sitk.Image(size, sitk.sitkUInt8)
        grid.SetSpacing([float(spacing)] * 3)
        letters = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
        direction = np.array([letters[c] for c in self.orientation], dtype=float).T  # columns = axes
        grid.SetDirection(tuple(direction.ravel()))
        half = (np.array(size) - 1) / 2 * spacing
        grid.SetOrigin(tuple(np.asarray(center) - direction @ half))
        return grid


BRATS_GRID = GridSpec((240, 240, 155), "LPS", scale_range=(1.0, 1.1))
ATLAS_GRID = GridSpec((197, 233, 189), "RAS")
UKB_GRID = GridSpec((182, 218, 182), "RAS")


@dataclass
class Subject:
    grid: sitk.Image
    tissues: Dict[str, np.ndarray]  # probability maps, (z, y, x) arrays on ``grid``
    brain: np.ndarray  # bool, (z, y, x)
    _texture: Optional[np.ndarray] = None
    _depth: Optional[np.ndarray] = None

    def texture(self, rng: np.random.Generator) -> np.ndarray:
        """Fine intensity texture of this subject's tissue (drawn once, then reused)."""
        if self._texture is None:
            self._texture = smooth_noise(rng, self.brain.shape, coarse=16)
        return self._texture

    def depth(self) -> np.ndarray:
        """Distance (mm) of each brain voxel to the brain's outside, computed in the brain's
        bounding box (a third of a BraTS grid)."""
        if self._depth is None:  # the brain mask never changes after the warp
            box = self.brain_box(margin=1)
            self._depth = np.zeros(self.brain.shape, np.float32)
            self._depth[box] = ndimage.distance_transform_edt(self.brain[box], sampling=self.spacing)
        return self._depth

    def brain_box(self, margin: int = 0) -> Tuple[slice, ...]:
        """Array slices of the brain's bounding box grown by ``margin`` voxels."""
        found = np.argwhere(self.brain)
        low = np.maximum(found.min(axis=0) - margin, 0)
        high = np.minimum(found.max(axis=0) + margin + 1, self.brain.shape)
        return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))

    def cropped(self, box: Tuple[slice, ...]) -> "Subject":
        """The subject in the box (array views; its own grid and texture)."""
        start = [int(b.start or 0) for b in box][::-1]  # ITK index order (x, y, z)
        size = [int((b.stop or n) - (b.start or 0)) for b, n in zip(box, self.brain.shape, strict=True)][::-1]
        grid = sitk.RegionOfInterest(self.grid, size, start)
        return Subject(grid=grid, tissues={k: v[box] for k, v in self.tissues.items()}, brain=self.brain[box])

    @property
    def spacing(self) -> Tuple[float, float, float]:
        return tuple(self.grid.GetSpacing())[::-1]  # in array (z, y, x) order


def random_transform(
    rng: np.random.Generator,
    template: Template,
    grid: sitk.Image,
    max_rotation_deg: float = 8.0,
    scale_range=(0.92, 1.08),
    warp_mm: float = 2.5,
):
    """Maps output points to template points: affine about the brain centre + B-spline warp."""
    center = template.brain_center()
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(center))
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*angles)
    scales = rng.uniform(*scale_range, 3)
    matrix = np.array(euler.GetMatrix()).reshape(3, 3) @ np.diag(scales)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetTranslation(tuple(rng.uniform(-4, 4, 3)))
    mesh = [5, 5, 5]
    bspline = sitk.BSplineTransformInitializer(grid, mesh, 3)
    params = rng.normal(0, warp_mm, len(bspline.GetParameters()))
    bspline.SetParameters(tuple(params))
    return sitk.CompositeTransform([affine, bspline])


@functools.lru_cache(maxsize=2)
def _stacked_maps(sigma: float) -> sitk.Image:
    """GM, WM, CSF and mask as one vector image, smoothed by ``sigma`` mm (kept: every case of a
    cohort at one spacing reuses it)."""
    template = load_template()
    maps = [getattr(template, name) for name in (*TISSUES, "mask")]
    if sigma > 0:
        maps = [sitk.SmoothingRecursiveGaussian(image, sigma) for image in maps]
    return sitk.Compose(maps)


def _warp_in_brain_box(template, grid_spec, grid, transform, center, sigma):
    """The maps warped onto ``grid`` only where the brain lands (found on a 4 mm grid), with the
    transform evaluated at 4 mm and interpolated, the four maps in one pass: a 1 mm subject in
    a fraction of the time, displacements within a few hundredths of a millimetre."""
    coarse = grid_spec.make(4.0, center) if grid.GetSpacing()[0] < 4 else grid
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        coarse.GetSize(),
        coarse.GetOrigin(),
        coarse.GetSpacing(),
        coarse.GetDirection(),
    )
    coarse_mask = sitk.Resample(template.mask, coarse, sitk.DisplacementFieldTransform(sitk.Image(field)))
    found = np.argwhere(sitk.GetArrayFromImage(coarse_mask) > 0.05)[:, ::-1]  # (x, y, z) indices
    corners = [coarse.TransformIndexToPhysicalPoint([int(v) for v in c]) for c in (found.min(0) - 1, found.max(0) + 1)]
    fine = np.array([grid.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.array(grid.GetSize())
    low = np.clip(np.floor(fine.min(0)).astype(int) - 2, 0, size - 1)
    high = np.clip(np.ceil(fine.max(0)).astype(int) + 3, low + 1, size)
    region = sitk.RegionOfInterest(grid, [int(v) for v in high - low], [int(v) for v in low])
    dense = sitk.Resample(field, region, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    warped = sitk.Resample(
        _stacked_maps(sigma),
        region,
        sitk.DisplacementFieldTransform(dense),
        sitk.sitkLinear,
        0.0,
        sitk.sitkVectorFloat32,
    )
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low[::-1], high[::-1], strict=True))
    full = np.zeros((*grid.GetSize()[::-1], 4), np.float32)
    full[box] = np.clip(sitk.GetArrayFromImage(warped), 0, 1)
    tissues = {name: np.ascontiguousarray(full[..., i]) for i, name in enumerate(TISSUES)}
    return tissues, full[..., 3]


def make_subject(rng: np.random.Generator, grid_spec: GridSpec, spacing: float, fast: bool = False) -> Subject:
    """The template warped onto a new grid (``fast``: see :func:`_warp_in_brain_box`)."""
    template = load_template()
    center = template.brain_center()
    grid = grid_spec.make(spacing, center)
    transform = random_transform(rng, template, grid, scale_range=grid_spec.scale_range)
    sigma = max(0.0, (spacing - 1.0) / 2)  # anti-aliasing before coarser sampling
    if fast:
        tissues, mask = _warp_in_brain_box(template, grid_spec, grid, transform, center, sigma)
    else:
        # One dense displacement field, reused for every map: far cheaper than evaluating the
        # B-spline once per map.
        field = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()
        )
        dense = sitk.DisplacementFieldTransform(field)

        def warp(image: sitk.Image) -> np.ndarray:
            if sigma > 0:
                image = sitk.SmoothingRecursiveGaussian(image, sigma)
            out = sitk.Resample(image, grid, dense, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            return np.clip(sitk.GetArrayFromImage(out), 0, 1)

        tissues = {name: warp(getattr(template, name)) for name in TISSUES}
        mask = warp(template.mask)
    brain = mask > 0.5
    for name in TISSUES:
        tissues[name] *= brain
    total = sum(tissues.values())
    tissues["csf"] += np.where(brain, np.clip(1 - total, 0, 1), 0)  # fill rounding gaps inside the brain
    return Subject(grid=grid, tissues=tissues, brain=brain)
