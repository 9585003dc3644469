"""What the module's self-test (BrainSegFounderSlicerTest, run inside Slicer) decides and measures."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from .dependencies import InstallPlan
from .results import label_image
from .volumes import volume_to_image

KNOWN_2023 = {1: "Necrotic tumor core", 2: "Peritumoral edema", 3: "Enhancing tumor"}


def model_test_skip_reason(plan: InstallPlan) -> Optional[str]:
    """None where the model part can run; else the message that says why it is skipped (the
    extension build machines run the self-test without torch)."""
    if plan.empty:
        return None
    return "Skipped the segmentation part of the self-test: " + plan.summary()


def whole_tumour_dice(scene, segmentation, reference, truth) -> float:
    """Dice of the whole tumour (every label > 0) against a ground-truth label volume node."""
    ours = sitk.GetArrayFromImage(label_image(scene, segmentation, reference, KNOWN_2023)) > 0
    theirs = sitk.GetArrayFromImage(volume_to_image(truth)) > 0
    return float(2 * np.logical_and(ours, theirs).sum() / max(ours.sum() + theirs.sum(), 1))
