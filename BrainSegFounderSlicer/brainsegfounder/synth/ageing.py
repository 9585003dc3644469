"""Anatomy that varies with age: larger ventricles and wider sulci (grey matter lost to CSF)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .lesions import push_tissue
from .subject import Subject


def age_anatomy(rng: np.random.Generator, subject: Subject) -> float:
    """Atrophy of a subject aged 20-85 years drawn here, in place; returns the age.

    Ventricles grow by the same radial map as a tumour's mass effect, centred in each lateral
    ventricle; cortical grey matter next to CSF thins into CSF. Both scale with age after 35
    (with a spread between subjects), so young brains stay as the template.
    """
    age = float(rng.uniform(20, 85))
    load = np.clip((age - 35) / 50, 0, 1) * rng.uniform(0.4, 1.3)
    spacing = np.array(subject.spacing)
    depth = subject.depth()
    ventricles = (subject.tissues["csf"] > 0.6) & (depth > 18)
    x_mid = np.argwhere(subject.brain)[:, 2].mean()
    x = np.arange(subject.brain.shape[2])[None, None, :]
    for side in (x < x_mid, x >= x_mid):
        voxels = np.argwhere(ventricles & side)
        if len(voxels) and load > 0:
            center = voxels.mean(axis=0) * spacing
            push_tissue(subject, center, radius=12, strength=0.5 * load, local=True)
    thinning = 0.45 * load * np.clip(ndimage.gaussian_filter(subject.tissues["csf"], 1.5 / spacing), 0, 1)
    lost = subject.tissues["gm"] * thinning
    subject.tissues["gm"] -= lost
    subject.tissues["csf"] += lost
    return age
