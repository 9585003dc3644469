"""BraTS 2023's lesion-wise Dice and HD95 of one binary region (WT, TC, ET or a lesion map).

The rules, as the public BraTS 2023 metrics code applies them (rachitsaluja/BraTS-2023-Metrics,
commit 43c9052; written here from its behaviour, none of its code):

- The truth's connected components (26-neighbourhood) are merged into one lesion wherever
  their dilations (18-neighbourhood structure, ``dilation`` iterations) touch; the truth's
  voxels are not changed.
- Every predicted component (26-neighbourhood) that touches a lesion's dilated region is
  matched to it; a component can match two lesions. A lesion's Dice and HD95 compare the
  lesion with the union of all its matched components (whole components, also their parts
  far from it). HD95 is DeepMind's surface-distance one: distances between the surface
  elements of the 2x2x2-neighbourhood grid, with the voxel spacing, each direction's 95th
  percentile weighted by the surface elements' areas, the larger of the two.
- A lesion with no matched component (false negative) scores Dice 0 and HD95 374 mm; a
  predicted component that touches no dilated lesion is a false positive and scores the same.
- Lesions of ``min_volume_mm3`` or less (voxel count x voxel volume: 50 voxels at BraTS's 1 mm)
  are not scored, and their matched components are no false positives.
- The case's score is the mean over the scored lesions and the false positives; with neither
  (both maps empty, or only small lesions and no false positive): Dice 1, HD95 0.

Settings per challenge (:data:`CHALLENGES`) are the reference code's; ``stroke`` is ours.
numpy and scipy only at import; MONAI's surface-element table (and so torch) when an HD95 is
computed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

# BraTS's HD95 of a lesion nothing was predicted for (and of a false positive): the
# diagonal of its 240 x 240 x 155 mm grid is 373.1; the reference code writes 374.
MISSING_HD95_MM = 374.0


@dataclass(frozen=True)
class Challenge:
    """How ground-truth lesions are formed and which are too small to count."""

    name: str
    dilation: int  # iterations of the 18-neighbourhood dilation that merges nearby lesions
    min_volume_mm3: float  # lesions of this volume or less are not scored
    source: str


CHALLENGES: Dict[str, Challenge] = {
    c.name: c
    for c in (
        Challenge("glioma", 3, 50.0, "BraTS-GLI 2023"),
        Challenge("sub-saharan", 3, 50.0, "BraTS-SSA 2023"),
        Challenge("pediatric", 3, 50.0, "BraTS-PED 2023"),
        Challenge("meningioma", 1, 50.0, "BraTS-MEN 2023"),
        Challenge("metastases", 1, 2.0, "BraTS-MET 2023"),
        # No BraTS or ATLAS definition exists: stroke lesions are many and small, like
        # metastases, so theirs (fragments within 2 voxels merged, stray voxels ignored).
        Challenge("stroke", 1, 2.0, "ours (ATLAS stroke lesions): the metastases setting"),
    )
}


def challenge(name: str) -> Challenge:
    from .errors import UserError

    if name not in CHALLENGES:
        raise UserError(f"unknown BraTS challenge {name!r}; choose one of {', '.join(CHALLENGES)}")
    return CHALLENGES[name]


@dataclass(frozen=True)
class LesionScores:
    dice: float
    hd95_mm: float
    true_positives: int  # scored lesions with a matched component
    false_negatives: int  # scored lesions without one
    false_positives: int  # predicted components touching no dilated lesion


def _components(mask: np.ndarray):
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The smallest distance at which the surface area up to it reaches ``percent``."""
    if not len(distances):
        return float("inf")
    order = np.argsort(distances, kind="stable")
    distances, cumulative = distances[order], np.cumsum(areas[order])
    index = int(np.searchsorted(cumulative / cumulative[-1], percent / 100.0))
    return float(distances[min(index, len(distances) - 1)])


def surface_hd95(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float], percent: float = 95.0) -> float:
    """HD95 in mm between two binary masks on the 2x2x2-neighbourhood surface grid, each
    direction's percentile weighted by surface-element area; inf when either is empty."""
    from monai.metrics.utils import get_mask_edges
    from scipy import ndimage

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if not pred.any() or not true.any():
        return float("inf")
    box = ndimage.find_objects((pred | true).astype(np.uint8))[0]
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes itself
        warnings.simplefilter("ignore", FutureWarning)
        edges_p, edges_t, areas_p, areas_t = get_mask_edges(pred[box], true[box], crop=True, spacing=tuple(spacing))
    to_pred = ndimage.distance_transform_edt(~edges_p, sampling=spacing)
    to_true = ndimage.distance_transform_edt(~edges_t, sampling=spacing)
    return max(
        _weighted_percentile(to_pred[edges_t], areas_t[edges_t], percent),
        _weighted_percentile(to_true[edges_p], areas_p[edges_p], percent),
    )


def lesion_wise(
    pred: np.ndarray, true: np.ndarray, spacing: Sequence[float], rules: str | Challenge = "glioma"
) -> LesionScores:
    """BraTS 2023 lesion-wise Dice and HD95 (mm) of one binary region.

    Args:
        pred: the predicted region, a binary array.
        true: the ground-truth region, same shape.
        spacing: voxel size in mm along the arrays' axes.
        rules: a :data:`CHALLENGES` name or a :class:`Challenge`.
    """
    from scipy import ndimage

    rules = challenge(rules) if isinstance(rules, str) else rules
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    voxel_mm3 = float(np.prod(spacing))
    pred_cc, n_pred = _components(pred)
    if true.any() and rules.dilation > 0:  # scipy dilates until nothing changes at 0 iterations
        structure = ndimage.generate_binary_structure(true.ndim, 2)
        dilated = ndimage.binary_dilation(true, structure=structure, iterations=rules.dilation)
    else:
        dilated = true
    # A component of the dilated truth is exactly the dilation of the lesion (the truth's
    # voxels inside it): a dilated voxel is connected to the voxel it grew from.
    groups, n_groups = _components(dilated)
    both = (groups > 0) & (pred_cc > 0)
    pairs = np.unique(np.stack([groups[both], pred_cc[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
    matched_anywhere = set(pairs[1].tolist())
    false_positives = n_pred - len(matched_anywhere)
    dice, hd95 = [], []
    tp = fn = 0
    for lesion in range(1, n_groups + 1):
        mine = true & (groups == lesion)
        if mine.sum() * voxel_mm3 <= rules.min_volume_mm3:
            continue
        matched = pairs[1][pairs[0] == lesion]
        if not len(matched):
            fn += 1
            dice.append(0.0)
            hd95.append(MISSING_HD95_MM)
            continue
        tp += 1
        theirs = np.isin(pred_cc, matched)
        dice.append(2.0 * np.count_nonzero(theirs & mine) / (np.count_nonzero(theirs) + np.count_nonzero(mine)))
        hd95.append(surface_hd95(theirs, mine, spacing))
    count = len(dice) + false_positives
    if count == 0:
        return LesionScores(1.0, 0.0, 0, 0, 0)
    return LesionScores(
        dice=float(sum(dice)) / count,
        hd95_mm=(float(sum(hd95)) + MISSING_HD95_MM * false_positives) / count,
        true_positives=tp,
        false_negatives=fn,
        false_positives=false_positives,
    )
