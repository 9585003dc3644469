"""Constructed BraTS label maps (1 NCR, 2 ED, 3 ET: the 2023 numbering) for the lesion-wise
metric tests, each an answer known by construction. numpy only: the same builders made the
NIfTI files the public BraTS 2023 metrics code was run on (see test_brats_lesion_metrics.py).

Arrays are indexed (x, y, z) like nibabel's, with the spacing in that order.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

SHAPE = (40, 40, 40)
C = 20  # the centre of the first tumour
FAR = 31  # the centre of a second one, 11 voxels from the first's edge on every axis


def tumour(a: np.ndarray, c=(C, C, C), r: int = 6) -> np.ndarray:
    """A (2r)^3 oedema cube (WT 1728 voxels) around a 6^3 core (TC 216) whose lower z half is
    enhancing (ET 108)."""
    x, y, z = c
    a[x - r : x + r, y - r : y + r, z - r : z + r] = 2
    a[x - 3 : x + 3, y - 3 : y + 3, z - 3 : z + 3] = 1
    a[x - 3 : x + 3, y - 3 : y + 3, z - 3 : z] = 3
    return a


def cube(a: np.ndarray, lo, size, value: int) -> np.ndarray:
    x, y, z = lo
    a[x : x + size, y : y + size, z : z + size] = value
    return a


def ball(a: np.ndarray, c, r: float, value: int, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A ball of radius ``r`` mm around voxel ``c``."""
    grid = np.indices(a.shape).astype(float)
    distance = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing, strict=True))
    a[distance <= r * r] = value
    return a


def _zeros(shape=SHAPE) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def _split() -> Tuple[np.ndarray, np.ndarray]:
    """One large lesion predicted exactly but for its middle plane: two components, global WT
    Dice 0.98, and each half covers 12 of the 25 planes, IoU 0.48: panoptica matches neither."""
    truth = tumour(_zeros((48, 48, 48)), (24, 24, 24), r=12)
    truth[36] = truth[35]  # WT spans x = 12..36, 25 planes
    pred = truth.copy()
    pred[24] = 0  # the plane x = 24 cuts every region in two
    return truth, pred


def _neighbours(gap: int) -> np.ndarray:
    """Two enhancing 6^3 cubes ``gap`` voxels apart along x."""
    truth = _zeros()
    cube(truth, (8, 15, 15), 6, 3)
    return cube(truth, (14 + gap, 15, 15), 6, 3)


def cases() -> Dict[str, Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]]:
    """name -> (truth, prediction, spacing in mm)."""
    iso = (1.0, 1.0, 1.0)
    out = {}
    t = tumour(_zeros())
    out["identical"] = (t, t.copy(), iso)
    out["split"] = (*_split(), iso)
    shifted = np.roll(t, 2, axis=0)
    out["shifted 2 voxels"] = (t, shifted, iso)
    # two lesions 3 voxels apart: one lesion after 3 dilations (glioma), two after 1 (metastases)
    both = _neighbours(3)
    first = both.copy()
    first[14:] = 0
    out["neighbours merged, one found"] = (both, first, iso)
    out["neighbours merged, both found"] = (both, both.copy(), iso)
    fp = cube(t.copy(), (33, 33, 33), 3, 2)  # 27 voxels of oedema far from the tumour
    out["tiny false positive"] = (t, fp, iso)
    near = cube(t.copy(), (28, 16, 16), 4, 2)  # 2 voxels past the oedema's edge at x = 25
    out["false positive 2 voxels away"] = (t, near, iso)
    out["empty prediction"] = (t, _zeros(), iso)
    out["empty truth"] = (_zeros(), t.copy(), iso)
    out["both empty"] = (_zeros(), _zeros(), iso)
    two = tumour(tumour(_zeros((48, 48, 48)), (12, 12, 12)), (FAR + 3, FAR + 3, FAR + 3))
    one = tumour(_zeros((48, 48, 48)), (12, 12, 12))
    out["missed second lesion"] = (two, one, iso)
    small = cube(t.copy(), (33, 33, 33), 3, 2)  # a 27-voxel lesion (27 mm^3 <= 50)
    out["27-voxel lesion missed"] = (small, t.copy(), iso)
    out["27-voxel lesion found"] = (small, small.copy(), iso)
    # a prediction bridging two lesions 10 voxels apart: one component matched to both
    apart = _neighbours(10)
    bridge = apart.copy()
    bridge[8:30, 17:19, 17:19] = 3
    out["one component over two lesions"] = (apart, bridge, iso)
    # anisotropic: 1 x 1 x 3 mm voxels; a shift of one slice is 3 mm
    aniso = tumour(_zeros(), (C, C, 12), r=6)
    out["1x1x3 mm, shifted one slice"] = (aniso, np.roll(aniso, 1, axis=2), (1.0, 1.0, 3.0))
    # a 20-voxel lesion (2 x 2 x 5) is 60 mm^3 at 1x1x3 mm: above the 50 mm^3 minimum
    small_thick = aniso.copy()
    small_thick[32:34, 32:34, 24:29] = 2
    out["1x1x3 mm, 20-voxel lesion missed"] = (small_thick, aniso.copy(), (1.0, 1.0, 3.0))
    # round shapes give HD95s between voxel steps: the surface elements' areas weigh in
    balls = ball(ball(_zeros(), (C, C, C), 9, 2), (C, C, C), 5, 3)
    grown = ball(ball(_zeros(), (C + 1, C - 1, C), 10, 2), (C + 2, C, C), 4, 3)
    out["balls, off-centre and resized"] = (balls, grown, iso)
    odd = (0.9, 1.2, 3.0)
    tilted = ball(ball(_zeros(), (C, C, 10), 9, 2, odd), (C, C, 10), 5, 3, odd)
    moved = ball(ball(_zeros(), (C + 2, C, 11), 8, 2, odd), (C + 1, C + 1, 10), 6, 3, odd)
    out["balls, 0.9x1.2x3 mm"] = (tilted, moved, odd)
    return out
