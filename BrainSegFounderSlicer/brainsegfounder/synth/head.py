"""Skull and scalp around a synthetic brain, for cases that are not brain-extracted."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

from .fields import smooth_noise
from .subject import Subject

# Layers outward from the brain surface: (tissue of the contrast tables, thickness range in mm).
LAYERS = (
    ("csf", (1.0, 3.0)),  # subarachnoid space and dura
    ("bone", (1.2, 2.2)),  # inner table
    ("fat", (1.5, 5.0)),  # diploe: fatty marrow
    ("bone", (1.2, 2.2)),  # outer table
    ("muscle", (1.0, 3.0)),  # galea and temporal muscle
    ("fat", (2.0, 6.0)),  # subcutaneous fat
    ("muscle", (1.0, 2.0)),  # skin
)


def head_layers(rng: np.random.Generator, subject: Subject) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Partial-volume fractions of the head tissues outside the brain, and the head mask.

    Each layer's thickness varies smoothly over the head; borders are one voxel soft.
    """
    spacing = np.array(subject.spacing)
    outside = ndimage.distance_transform_edt(~subject.brain, sampling=spacing)  # mm from the brain
    wobble = smooth_noise(rng, subject.brain.shape, coarse=5)
    step = float(spacing.mean())
    fractions: Dict[str, np.ndarray] = {}
    inner = np.zeros_like(outside)
    for tissue, (low, high) in LAYERS:
        thickness = rng.uniform(low, high) * (1 + 0.25 * wobble)
        outer = inner + thickness
        share = np.clip((outside - inner) / step + 0.5, 0, 1) - np.clip((outside - outer) / step + 0.5, 0, 1)
        fractions[tissue] = fractions.get(tissue, 0) + np.where(subject.brain, 0, share).astype(np.float32)
        inner = outer
    head = ~subject.brain & (outside < inner) | subject.brain
    return fractions, head
