"""Segmentation metrics per region, from MONAI, the engine's BraTS lesion-wise metric and panoptica.

Conventions (BraTS's, stated once here): Dice of an empty prediction of an empty region is 1;
HD95 is in millimetres with the voxel spacing, 0 when both are empty; for BraTS tasks it is
BraTS's own (surface elements weighted by area, as the BraTS 2023 code; 374 mm when only one
map is empty), otherwise MONAI's (the volume's diagonal when only one map is empty).

Lesion-wise:

- ``brats_lesion_dice`` and ``brats_lesion_hd95_mm``: BraTS 2023's lesion-wise scores
  (:mod:`brainsegfounder.lesion_metrics`: truth lesions merged by dilation, small ones not
  scored, every touching predicted component matched, each missed or false lesion Dice 0 and
  HD95 374 mm, the mean over lesions), with the settings of one BraTS challenge.
- ``panoptic_quality`` and ``recognition_quality``: panoptica's, connected components matched
  one-to-one at IoU >= 0.5 (panoptic quality: the matched lesions' Dice summed over
  TP + (FP + FN) / 2; recognition quality: the F1 of that matching), both 1 when neither map
  has a lesion. A lesion predicted in two pieces matches neither piece: both are 0 for it.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Sequence

import numpy as np

from brainsegfounder.lesion_metrics import MISSING_HD95_MM, lesion_wise, surface_hd95
from brainsegfounder.metrics import region_dice

NUMERIC = (
    "dice",
    "hd95_mm",
    "brats_lesion_dice",
    "brats_lesion_hd95_mm",
    "volume_pred_ml",
    "volume_true_ml",
    "volume_error_ml",
    "panoptic_quality",
    "recognition_quality",
    "lesions_true",
    "lesions_pred",
)


def region_hd95(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float], brats: bool = False) -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per channel, 0 where both maps are empty.

    ``brats``: BraTS's own HD95 (the public BraTS 2023 code's whole-region "legacy" HD95: surface
    elements weighted by area, :func:`surface_hd95`; 374 mm where only one map is empty).
    MONAI's differs from it by up to 1 mm (measured: 6 vs 7 mm on a lesion predicted in two).
    Otherwise MONAI's, with the spacing, and the volume's diagonal where only one map is empty.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    diagonal = float(np.linalg.norm(np.asarray(pred.shape[1:]) * np.asarray(spacing)))
    result = np.zeros(pred.shape[0])
    for c in range(pred.shape[0]):
        if not pred[c].any() and not true[c].any():
            result[c] = 0.0
        elif not pred[c].any() or not true[c].any():
            result[c] = MISSING_HD95_MM if brats else diagonal
        elif brats:
            result[c] = surface_hd95(pred[c], true[c], spacing)
        else:
            with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes itself
                warnings.simplefilter("ignore", FutureWarning)
                value = compute_hausdorff_distance(
                    torch.as_tensor(pred[c][None, None]),
                    torch.as_tensor(true[c][None, None]),
                    include_background=True,
                    percentile=95,
                    spacing=list(spacing),
                )
            result[c] = float(value.reshape(-1)[0])
    return result


def panoptic(pred: np.ndarray, true: np.ndarray) -> Dict[str, float]:
    """panoptica's panoptic and recognition quality and lesion counts of one binary region."""
    import panoptica
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        Metric,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )

    panoptica.disable_citation_reminder()
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(matching_threshold=0.5),
        instance_metrics=[Metric.DSC],
        global_metrics=[Metric.DSC],
        verbose=False,
    )
    result = evaluator.evaluate(np.asarray(pred, np.uint8), np.asarray(true, np.uint8), verbose=False)
    values = next(iter(result.values())).to_dict()
    empty = values["n_ref_instances"] == 0 and values["n_pred_instances"] == 0
    return {
        "panoptic_quality": 1.0 if empty else float(np.nan_to_num(values["pq_dsc"])),
        "recognition_quality": 1.0 if empty else float(np.nan_to_num(values["rq"])),
        "lesions_true": int(values["n_ref_instances"]),
        "lesions_pred": int(values["n_pred_instances"]),
    }


def case_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    spacing: Sequence[float],
    names: Sequence[str],
    lesions: bool = True,
    rules: str = "glioma",
    brats_hd95: bool = False,
) -> Dict[str, Dict[str, float]]:
    """All metrics of one case: ``{region: {metric: value}}`` for binary (R, ...) arrays.

    Args:
        pred: predicted regions, binary (R, ...).
        true: ground-truth regions, binary (R, ...).
        spacing: voxel size in mm along the spatial axes.
        names: the R region names.
        lesions: whether to compute the lesion-wise metrics (BraTS's and panoptica's).
        rules: the BraTS challenge whose lesion-wise settings apply (``lesion_metrics.CHALLENGES``).
        brats_hd95: the global HD95 by BraTS's definition (BraTS tasks), else MONAI's (see region_hd95).
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    dice = region_dice(pred, true)
    hd95 = region_hd95(pred, true, spacing, brats_hd95)
    out = {}
    for c, name in enumerate(names):
        vp, vt = float(pred[c].sum()) * voxel_ml, float(true[c].sum()) * voxel_ml
        row = {
            "dice": float(dice[c]),
            "hd95_mm": float(hd95[c]),
            "volume_pred_ml": vp,
            "volume_true_ml": vt,
            "volume_error_ml": vp - vt,
        }
        if lesions:
            brats = lesion_wise(pred[c], true[c], spacing, rules)
            row.update(brats_lesion_dice=brats.dice, brats_lesion_hd95_mm=brats.hd95_mm)
            row.update(panoptic(pred[c], true[c]))
        out[name] = row
    return out


def summarise(rows: Sequence[dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean, sd and median of each metric per region over case rows ``{region, metric...}``."""
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for region in dict.fromkeys(r["region"] for r in rows):
        mine = [r for r in rows if r["region"] == region]
        summary[region] = {}
        for metric in NUMERIC:
            values = np.array([r[metric] for r in mine if metric in r and r[metric] is not None], float)
            values = values[np.isfinite(values)]
            if len(values):
                summary[region][metric] = {
                    "mean": float(values.mean()),
                    "sd": float(values.std()),
                    "median": float(np.median(values)),
                    "n": len(values),
                }
    return summary


def mean_dice(per_region: Dict[str, float]) -> float:
    values = [v for v in per_region.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
