"""MR contrasts: mean signal per tissue and modality, partial volume, texture, bias and noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

from .acquisition import biased, noise_sigma, rician
from .subject import TISSUES, Subject

# Relative signal per tissue (WM-normalised in spirit), after typical clinical protocols:
# T1 WM > GM > CSF; T2 CSF bright; FLAIR CSF suppressed, edema brightest; T1ce enhancing rim bright.
MEANS: Dict[str, Dict[str, float]] = {
    "t1": {"csf": 0.25, "gm": 0.55, "wm": 0.85, "necrosis": 0.25, "enhancing": 0.55, "edema": 0.45, "infarct": 0.22},
    "t1ce": {"csf": 0.25, "gm": 0.55, "wm": 0.80, "necrosis": 0.22, "enhancing": 1.30, "edema": 0.45, "infarct": 0.22},
    "t2": {"csf": 1.00, "gm": 0.55, "wm": 0.40, "necrosis": 0.95, "enhancing": 0.65, "edema": 0.85, "infarct": 0.95},
    "flair": {"csf": 0.12, "gm": 0.60, "wm": 0.48, "necrosis": 0.55, "enhancing": 0.75, "edema": 0.95, "infarct": 0.30},
}

# Tissues the classic world does not draw (kept apart from MEANS, whose draws it replays):
# non-enhancing tumour, and the head around the brain (fat in scalp and marrow, bone, muscle).
EXTRA_MEANS: Dict[str, Dict[str, float]] = {
    "t1": {"nonenhancing": 0.45, "fat": 1.00, "bone": 0.03, "muscle": 0.45},
    "t1ce": {"nonenhancing": 0.50, "fat": 0.95, "bone": 0.03, "muscle": 0.50},
    "t2": {"nonenhancing": 0.80, "fat": 0.75, "bone": 0.03, "muscle": 0.30},
    "flair": {"nonenhancing": 0.85, "fat": 0.70, "bone": 0.03, "muscle": 0.35},
}

# Ranges a tissue's signal spans between subjects, scanners and protocols (same scale as MEANS),
# wide enough that edema meets CSF on T2 and grey matter on FLAIR and T1 in some subjects.
RANGES: Dict[str, Dict[str, tuple]] = {
    "t1": {
        "csf": (0.15, 0.35), "gm": (0.47, 0.63), "wm": (0.78, 0.95), "necrosis": (0.15, 0.35),
        "nonenhancing": (0.35, 0.55), "enhancing": (0.45, 0.70), "edema": (0.35, 0.58), "infarct": (0.15, 0.32),
    },
    "t1ce": {
        "csf": (0.15, 0.35), "gm": (0.47, 0.63), "wm": (0.74, 0.92), "necrosis": (0.12, 0.35),
        "nonenhancing": (0.35, 0.58), "enhancing": (1.00, 1.60), "edema": (0.35, 0.58), "infarct": (0.15, 0.32),
    },
    "t2": {
        "csf": (0.90, 1.10), "gm": (0.50, 0.66), "wm": (0.32, 0.46), "necrosis": (0.80, 1.10),
        "nonenhancing": (0.65, 0.92), "enhancing": (0.55, 0.80), "edema": (0.70, 1.00), "infarct": (0.85, 1.05),
    },
    "flair": {
        "csf": (0.05, 0.20), "gm": (0.52, 0.70), "wm": (0.40, 0.53), "necrosis": (0.30, 0.80),
        "nonenhancing": (0.70, 0.98), "enhancing": (0.60, 0.90), "edema": (0.78, 1.15), "infarct": (0.20, 0.45),
    },
}  # fmt: skip


def draw_means(rng: np.random.Generator, modality: str, varied: bool) -> Dict[str, float]:
    """Signal of each tissue for one subject: in RANGES when ``varied``, else within 8% of MEANS."""
    if varied:
        return {k: float(rng.uniform(*r)) for k, r in RANGES[modality].items()} | {
            k: v * rng.uniform(0.85, 1.15) for k, v in EXTRA_MEANS[modality].items()
        }
    return {k: v * rng.uniform(0.92, 1.08) for k, v in {**MEANS[modality], **EXTRA_MEANS[modality]}.items()}


@dataclass
class Layer:
    """A lesion or head compartment as the renderer sees it: a partial-volume fraction and a
    relative intensity modulation (zero-mean; None: the subject's own fine texture)."""

    tissue: str  # a key of the contrast tables
    fraction: np.ndarray  # 0..1 (or bool), on the subject grid
    modulation: Optional[np.ndarray] = None
    weight: float = 1.0  # how much of the tissue's own signal the lesion replaces


def compose(subject: Subject, means: Dict[str, float], layers: Iterable[Layer], texture: np.ndarray) -> np.ndarray:
    """The noiseless image: tissue maps times their signal, lesion layers drawn over in order."""
    image = sum(subject.tissues[t] * means[t] for t in TISSUES) * (1 + 0.04 * texture)
    for layer in layers:
        if layer.weight == 0:  # outside the brain (the head): added where the tissue maps are 0
            image = image + layer.fraction * means[layer.tissue]
            continue
        share = layer.weight * layer.fraction.astype(np.float32)
        modulation = 0.10 * texture if layer.modulation is None else layer.modulation
        image = image * (1 - share) + share * means[layer.tissue] * (1 + modulation)
    return image


def render(
    rng: np.random.Generator,
    subject: Subject,
    modality: str,
    lesions: Optional[Dict[str, np.ndarray]] = None,
    gain: float = 1000.0,
) -> np.ndarray:
    """One modality's image (z, y, x), float32, skull-stripped (0 outside the brain)."""
    means = {k: v * rng.uniform(0.92, 1.08) for k, v in MEANS[modality].items()}  # per-subject contrast
    # Texture is anatomy: one field per subject, shared by all its modalities.
    texture = subject.texture(rng)
    # edema raises water content, keeps some tissue signal
    layers = [Layer(name, mask, weight=0.75 if name == "edema" else 1.0) for name, mask in (lesions or {}).items()]
    image = compose(subject, means, layers, texture)
    image = biased(rng, image, varied=False)
    image = rician(rng, image, noise_sigma(rng, means["wm"], varied=False))
    image = np.where(subject.brain, image, 0.0) * gain
    return image.astype(np.float32)
