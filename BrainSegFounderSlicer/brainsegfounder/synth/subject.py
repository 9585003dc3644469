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

    def texture(self, rng: np.random.Generator) -> np.ndarray:
        """Fine intensity texture of this subject's tissue (drawn once, then reused)."""
        if self._texture is None:
            self._texture = smooth_noise(rng, self.brain.shape, coarse=16)
        return self._texture

    def depth(self) -> np.ndarray:
        """Distance (mm) of each brain voxel to the brain's outside, computed in the brain's
        bounding box (a third of a BraTS grid)."""
        box = self.brain_box(margin=1)
        depth = np.zeros(self.brain.shape, np.float32)
        depth[box] = ndimage.distance_transform_edt(self.brain[box], sampling=self.spacing)
        return depth

    def brain_box(self, margin: int = 0) -> Tuple[slice, ...]:
        """Array slices of the brain's bounding box grown by ``margin`` voxels."""
        found = np.argwhere(self.brain)
        low = np.maximum(found.min(axis=0) - margin, 0)
        high = np.minimum(found.max(axis=0) + margin + 1, self.brain.shape)
        return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))

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


def make_subject(rng: np.random.Generator, grid_spec: GridSpec, spacing: float, fast: bool = False) -> Subject:
    """The template warped onto a new grid. ``fast`` evaluates the smooth transform on a 4 mm
    grid and interpolates it, and warps the four maps in one pass: a 1 mm subject in about a
    third of the time, with displacements within a few hundredths of a millimetre."""
    template = load_template()
    center = template.brain_center()
    grid = grid_spec.make(spacing, center)
    transform = random_transform(rng, template, grid, scale_range=grid_spec.scale_range)
    # One dense displacement field, reused for every map: far cheaper than evaluating the
    # B-spline once per map.
    field_grid = grid
    if fast and spacing < 4:
        field_grid = grid_spec.make(4.0, center)
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        field_grid.GetSize(),
        field_grid.GetOrigin(),
        field_grid.GetSpacing(),
        field_grid.GetDirection(),
    )
    if field_grid is not grid:
        field = sitk.Resample(field, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    dense = sitk.DisplacementFieldTransform(field)
    sigma = max(0.0, (spacing - 1.0) / 2)  # anti-aliasing before coarser sampling

    def warp(image: sitk.Image) -> np.ndarray:
        if sigma > 0:
            image = sitk.SmoothingRecursiveGaussian(image, sigma)
        out = sitk.Resample(image, grid, dense, sitk.sitkLinear, 0.0, image.GetPixelID())
        return np.clip(sitk.GetArrayFromImage(out), 0, 1)

    maps = [getattr(template, name) for name in (*TISSUES, "mask")]
    if fast:
        warped = sitk.Resample(_stacked_maps(sigma), grid, dense, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
        warped = np.clip(sitk.GetArrayFromImage(warped), 0, 1)  # (z, y, x, 4)
        tissues = {name: np.ascontiguousarray(warped[..., i]) for i, name in enumerate(TISSUES)}
        mask = warped[..., 3]
    else:
        tissues = {name: warp(image) for name, image in zip(TISSUES, maps[:3], strict=True)}
        mask = warp(maps[3])
    brain = mask > 0.5
    for name in TISSUES:
        tissues[name] *= brain
    total = sum(tissues.values())
    tissues["csf"] += np.where(brain, np.clip(1 - total, 0, 1), 0)  # fill rounding gaps inside the brain
    return Subject(grid=grid, tissues=tissues, brain=brain)
