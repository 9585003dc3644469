"""Gliomas closer to real scans: lobulated cores with irregular necrosis, enhancing rims of
varying thickness that are incomplete or nodular, non-enhancing tumour, one to three foci
anywhere in the hemispheres, and edema that infiltrates along white matter with soft borders.

Each focus is built in a box around it (a 1 mm grid has 9 million voxels; a focus needs a
few hundred thousand). What the world's switches leave off is drawn as the classic tumour
of :mod:`.lesions` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Tuple

import numpy as np
from scipy import ndimage

from .contrast import Layer
from .fields import smooth_noise
from .lesions import Tumour, _ellipsoid_radius, _physical_coordinates, _pick_center, push_tissue
from .subject import Subject
from .world import World


@dataclass
class Glioma:
    labels: Tumour  # what the label map says
    layers: List[Layer] = field(default_factory=list)  # what the images show, in drawing order


def _box(center_mm, half_mm, spacing, shape) -> Tuple[slice, ...]:
    low = np.maximum(np.floor((center_mm - half_mm) / spacing).astype(int), 0)
    high = np.minimum(np.ceil((center_mm + half_mm) / spacing).astype(int) + 1, shape)
    return tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))


def _site(rng, subject: Subject, depth: np.ndarray, radius: float, sites: bool) -> np.ndarray:
    """Centre (mm) of a focus: deep white matter, or with ``sites`` also next to the ventricles or
    under the cortex."""
    wm, gm, csf = (subject.tissues[t] for t in ("wm", "gm", "csf"))
    where = "white matter"
    if sites:
        where = rng.choice(["white matter", "periventricular", "cortical"], p=[0.4, 0.3, 0.3])
    if where == "periventricular":
        ventricles = (csf > 0.6) & (depth > 18)
        near = ndimage.binary_dilation(ventricles, iterations=max(1, round(6 / subject.spacing[0])))
        allowed = near & ~ventricles & (wm > 0.3)
    elif where == "cortical":
        allowed = (gm > 0.4) & (depth > 4) & (depth < 0.6 * radius + 8)
    else:
        allowed = (wm > 0.5) & (depth > radius + 8)
    if not allowed.any():
        allowed = depth >= depth.max() * 0.6
    return _pick_center(rng, allowed) * np.array(subject.spacing)


def _split_core(rng, core, rho, spacing, texture: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(necrosis, non-enhancing, enhancing) masks of a core, in its box."""
    shape = core.shape
    if not texture:  # the classic ball: a necrotic centre inside a closed enhancing shell
        fraction = rng.uniform(0.35, 0.75) if rng.random() > 0.15 else 0.0
        necrosis = core & (rho < fraction + 0.08 * smooth_noise(rng, shape, coarse=10))
        return necrosis, np.zeros_like(core), core & ~necrosis
    if rng.random() < 0.12:  # a non-enhancing (lower grade) tumour: no rim, no necrosis
        return np.zeros_like(core), core, np.zeros_like(core)
    necrosis = np.zeros_like(core)
    if rng.random() < 0.85:
        fraction = rng.uniform(0.3, 0.75)
        necrosis = core & (rho < fraction * (1 + 0.35 * smooth_noise(rng, shape, coarse=10)))
    inside = ndimage.distance_transform_edt(core, sampling=spacing)  # mm to the core's outside
    thickness = np.clip(rng.uniform(1.5, 5) * np.exp(0.5 * smooth_noise(rng, shape, coarse=6)), 1, 10)
    open_rim = smooth_noise(rng, shape, coarse=5) < rng.uniform(-1.6, -0.1)  # 5-46% of the rim missing
    enhancing = core & ~necrosis & (inside < thickness) & ~open_rim
    surface = np.argwhere(core & (inside < 3))
    coords = _physical_coordinates(shape, spacing)
    for _ in range(rng.integers(0, 4) if len(surface) else 0):  # enhancing nodules on the wall
        center = surface[rng.integers(len(surface))] * spacing
        enhancing |= core & (_ellipsoid_radius(rng, coords, center, rng.uniform(2, 6, 3)) < 1)
    necrosis &= ~enhancing
    return necrosis, core & ~necrosis & ~enhancing, enhancing


def _edema(rng, subject_box, core, reach, spacing, infiltration: bool):
    """Edema fraction (0..1) in the box: classic (distance scaled by white matter) or spreading
    voxel by voxel through white matter only, with a soft, noisy front."""
    wm, brain = subject_box
    shape = core.shape
    if not infiltration:
        distance = ndimage.distance_transform_edt(~core, sampling=spacing)
        wm_smooth = ndimage.gaussian_filter(wm, 1.0)
        edema = (distance < reach * (0.15 + wm_smooth) * (1 + 0.25 * smooth_noise(rng, shape, coarse=8))) & brain
        return ndimage.binary_opening(edema & ~core, iterations=1).astype(np.float32)
    # Vasogenic edema follows the white-matter tracts and stops at the cortex: a front that
    # advances one voxel per step through voxels whose (noisy) white-matter share is high.
    permeable = (wm + 0.35 * smooth_noise(rng, shape, coarse=12) > rng.uniform(0.3, 0.5)) & brain
    reached = core.copy()
    steps = np.full(shape, np.inf, np.float32)
    steps[core] = 0
    step_mm = float(np.mean(spacing))
    for i in range(1, int(np.ceil(reach * 1.3 / step_mm)) + 1):
        grown = ndimage.binary_dilation(reached) & permeable
        steps[grown & ~reached] = i * step_mm
        reached = grown | reached
    front = reach * (1 + 0.3 * smooth_noise(rng, shape, coarse=8))
    width = rng.uniform(1.5, 4.0)  # mm of partial volume at the front
    fraction = np.clip((front - steps) / (2 * width) + 0.5, 0, 1)
    fraction = ndimage.gaussian_filter(fraction, 0.8 / np.asarray(spacing))  # spills a little into grey matter
    return np.where(brain & ~core, fraction, 0).astype(np.float32)


def _modulation(rng, shape, strength: float) -> np.ndarray:
    """Heterogeneous interior: blotches and finer grain, zero-mean, ``strength`` standard deviation."""
    return (strength * (0.8 * smooth_noise(rng, shape, coarse=6) + 0.6 * smooth_noise(rng, shape, coarse=18))).astype(
        np.float32
    )


def add_glioma(streams: Callable[[str], np.random.Generator], subject: Subject, world: World) -> Glioma:
    """One to three tumour foci, drawn into ``subject`` (mass effect included). ``streams(name)``
    gives the random stream of each part, so that a switch changes only what it is about."""
    spacing = np.array(subject.spacing)
    shape = subject.brain.shape
    depth = subject.depth()
    foci = 1
    if world.multifocal:
        count = streams("foci")
        foci += int(count.random() < 0.45) + int(count.random() < 0.15)
    full = {name: np.zeros(shape, np.float32) for name in ("edema", "nonenhancing", "enhancing", "necrosis")}
    modulation = {name: np.zeros(shape, np.float32) for name in full}
    weight = 0.75
    first_center = np.zeros(3)
    for focus in range(foci):
        rng = streams(f"focus {focus}")
        radius = rng.uniform(9, 22) if focus == 0 else rng.uniform(4, 11)
        site = streams(f"site {focus}")
        center = _site(site, subject, depth, radius, world.sites)
        if focus > 0 and site.random() < 0.6:  # a satellite near the main mass
            direction = site.standard_normal(3)
            near = first_center + direction / np.linalg.norm(direction) * site.uniform(15, 35)
            index = tuple(np.clip(np.round(near / spacing).astype(int), 0, np.array(shape) - 1))
            center = near if subject.brain[index] else center
        first_center = center if focus == 0 else first_center
        push_tissue(subject, center, radius, strength=rng.uniform(0.15, 0.45) * (1 if focus == 0 else 0.5), local=True)
        reach = rng.uniform(10, 30) if world.infiltration else rng.uniform(8, 25)  # mm
        box = _box(center, radius * 1.6 + reach * 1.4 + 6, spacing, shape)
        start = np.array([s.start for s in box]) * spacing
        brain = subject.brain[box]
        coords = _physical_coordinates(brain.shape, spacing)
        rho = _ellipsoid_radius(rng, coords, center - start, radius * rng.uniform(0.75, 1.25, 3))
        lobes = streams(f"lobes {focus}").uniform(0.1, 0.3) if world.texture else 0.18
        rho = rho * (1 + lobes * smooth_noise(rng, brain.shape, coarse=8))
        core = (rho < 1) & brain
        necrosis, nonenhancing, enhancing = _split_core(streams(f"core {focus}"), core, rho, spacing, world.texture)
        grow = streams(f"edema {focus}")
        edema = _edema(grow, (subject.tissues["wm"][box], brain), core, reach, spacing, world.infiltration)
        for name, mask in (("edema", edema), ("nonenhancing", nonenhancing), ("enhancing", enhancing)):
            full[name][box] = np.maximum(full[name][box], mask)
        full["necrosis"][box] = np.maximum(full["necrosis"][box], necrosis)
        if world.texture:
            grain = streams(f"texture {focus}")
            strengths = {"necrosis": (0.12, 0.3), "nonenhancing": (0.08, 0.2), "enhancing": (0.15, 0.35)}
            for name, (low, high) in strengths.items():
                modulation[name][box] = _modulation(grain, brain.shape, grain.uniform(low, high))
        if world.infiltration:
            modulation["edema"][box] = _modulation(grow, brain.shape, grow.uniform(0.05, 0.15))
            weight = grow.uniform(0.6, 0.9) if focus == 0 else weight
    core = (full["necrosis"] + full["nonenhancing"] + full["enhancing"]) > 0.5
    enhancing_mask = full["enhancing"] > 0.5
    labels = Tumour(necrosis=core & ~enhancing_mask, enhancing=enhancing_mask, edema=(full["edema"] > 0.5) & ~core)
    layers = [Layer("edema", full["edema"] * ~core, modulation["edema"] if world.infiltration else None, weight)]
    for name in ("nonenhancing", "enhancing", "necrosis"):
        fraction = full[name]
        if world.texture:
            fraction = ndimage.gaussian_filter(fraction, 0.5 / spacing)  # partial volume at the core's borders
        layers.append(Layer(name, fraction, modulation[name] if world.texture else None))
    return Glioma(labels=labels, layers=layers)
