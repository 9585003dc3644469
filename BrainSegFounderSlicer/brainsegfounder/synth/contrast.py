"""MR contrasts: mean signal per tissue and modality, partial volume, texture, bias and noise."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .fields import bias_field
from .subject import Subject

# Relative signal per tissue (WM-normalised in spirit), after typical clinical protocols:
# T1 WM > GM > CSF; T2 CSF bright; FLAIR CSF suppressed, edema brightest; T1ce enhancing rim bright.
MEANS: Dict[str, Dict[str, float]] = {
    "t1": {"csf": 0.25, "gm": 0.55, "wm": 0.85, "necrosis": 0.25, "enhancing": 0.55, "edema": 0.45, "infarct": 0.22},
    "t1ce": {"csf": 0.25, "gm": 0.55, "wm": 0.80, "necrosis": 0.22, "enhancing": 1.30, "edema": 0.45, "infarct": 0.22},
    "t2": {"csf": 1.00, "gm": 0.55, "wm": 0.40, "necrosis": 0.95, "enhancing": 0.65, "edema": 0.85, "infarct": 0.95},
    "flair": {"csf": 0.12, "gm": 0.60, "wm": 0.48, "necrosis": 0.55, "enhancing": 0.75, "edema": 0.95, "infarct": 0.30},
}


def render(
    rng: np.random.Generator,
    subject: Subject,
    modality: str,
    lesions: Optional[Dict[str, np.ndarray]] = None,
    gain: float = 1000.0,
) -> np.ndarray:
    """One modality's image (z, y, x), float32, skull-stripped (0 outside the brain)."""
    means = {k: v * rng.uniform(0.92, 1.08) for k, v in MEANS[modality].items()}  # per-subject contrast
    shape = subject.brain.shape
    # Texture is anatomy: one field per subject, shared by all its modalities.
    texture = subject.texture(rng)
    image = sum(subject.tissues[t] * means[t] for t in ("gm", "wm", "csf")) * (1 + 0.04 * texture)
    for name, mask in (lesions or {}).items():
        soft = mask.astype(np.float32)
        weight = 0.75 if name == "edema" else 1.0  # edema raises water content, keeps some tissue signal
        image = image * (1 - weight * soft) + weight * soft * means[name] * (1 + 0.10 * texture)
    image = image * bias_field(rng, shape, strength=rng.uniform(0.05, 0.15))
    sigma = rng.uniform(0.015, 0.035) * means["wm"]
    image = np.sqrt((image + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)  # Rician
    image = np.where(subject.brain, image, 0.0) * gain
    return image.astype(np.float32)
