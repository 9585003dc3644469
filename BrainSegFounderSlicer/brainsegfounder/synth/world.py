"""Which synthetic world a case comes from: the classic one (flat tumours, fixed contrasts) or
one closer to real scans, built from independent switches.

Each switch is one kind of variation and draws its randomness from its own stream (seed,
index, switch), so turning one on or off changes that variation only: the rest of the case
stays the same, which is what an ablation of the world needs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace
from typing import Iterable, Tuple

import numpy as np

from ..errors import UserError

# switch -> what it adds (the CLI's --with / --without names use dashes)
SWITCHES = {
    "texture": "heterogeneous tumour interiors, irregular necrosis, incomplete and nodular rims of varying thickness",
    "multifocal": "a second or third tumour focus in some cases",
    "sites": "tumours near the ventricles and the cortex too, not only deep in white matter",
    "infiltration": "edema spreading along white matter with soft partial-volume borders and varied contrast",
    "contrast": "signal of each tissue drawn per subject in realistic ranges for each sequence",
    "bias": "stronger and more varied bias fields",
    "noise": "noise levels from clean 3D to noisy 2D protocols",
    "thick_slices": "some contrasts acquired in thick slices and resampled back to the grid",
    "misregistration": "contrasts slightly moved against T1 and the labels (residual co-registration error)",
    "atrophy": "anatomy varied with age: wider sulci and larger ventricles",
    # off in the realistic preset: BraTS and UK Biobank images are brain-extracted
    "skull": "skull and scalp around the brain",
}


@dataclass(frozen=True)
class World:
    texture: bool = False
    multifocal: bool = False
    sites: bool = False
    infiltration: bool = False
    contrast: bool = False
    bias: bool = False
    noise: bool = False
    thick_slices: bool = False
    misregistration: bool = False
    atrophy: bool = False
    skull: bool = False

    @property
    def classic(self) -> bool:
        return not any(self.enabled())

    def enabled(self) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    def switched(self, on: Iterable[str] = (), off: Iterable[str] = ()) -> "World":
        changes = {}
        for value, names in ((True, on), (False, off)):
            for name in names:
                key = name.replace("-", "_")
                if key not in SWITCHES:
                    known = ", ".join(s.replace("_", "-") for s in SWITCHES)
                    raise UserError(f"unknown synthetic-world switch {name!r}; choose from {known}")
                changes[key] = value
        return replace(self, **changes)


CLASSIC = World()
REALISTIC = World(**{name: name != "skull" for name in SWITCHES})
PRESETS = {"classic": CLASSIC, "realistic": REALISTIC}


def world_named(name: str, on: Iterable[str] = (), off: Iterable[str] = ()) -> World:
    if name not in PRESETS:
        raise UserError(f"unknown synthetic world {name!r}; choose {' or '.join(PRESETS)}")
    return PRESETS[name].switched(on, off)


def stream(seed: int, index: int, *names: str) -> np.random.Generator:
    """An independent random stream of one case for one purpose (stable across runs and versions)."""
    return np.random.default_rng([seed, index, *(zlib.crc32(n.encode()) for n in names)])
