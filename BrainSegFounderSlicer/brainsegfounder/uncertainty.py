"""Where the model is unsure: the spread of its eight mirror-flip predictions.

The map is the **variance**, over the 8 flips of test-time augmentation, of each region's
sigmoid probability, the largest over the regions at each voxel (0 to 0.25). Variance rather
than the entropy of the averaged prediction because it is what the flips add: the model
disagreeing with itself, where the entropy of the mean is also high wherever all eight agree on
a probability near 0.5. Measured as a detector of the voxels the label map gets wrong (ROC AUC
over brain voxels, the demo model on two synthetic BraTS cases at 3 mm): variance 0.947 and
0.951, entropy of the mean 0.945 and 0.935, entropy of one unflipped pass 0.940 and 0.893; on
the harder case's whole tumour 0.878 against 0.812 for the entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk

# Uncertain: the flips' probabilities spread by 0.1 or more (standard deviation), e.g. one flip
# of eight disagreeing with the rest by 0.3. On the demo model's synthetic case at 3 mm (the
# slow test in Testing/engine/test_uncertainty.py) it flags 2.1x as many voxels as the model
# gets wrong and 53% of its errors; 0.005 flags 3.4x and 75%, 0.02 flags 1x and 29%.
UNCERTAIN_VARIANCE = 0.01
MEASURE = "variance of the sigmoid probabilities of the {flips} mirror flips (largest over the regions)"


class FlipStatistics:
    """Running mean (and, with ``spread``, variance) of the flips' probabilities, summed in
    place on the tensors' own device so no flip's prediction is kept."""

    def __init__(self, spread: bool = False) -> None:
        self.spread = spread
        self.n = 0
        self._sum = None
        self._squares = None

    def add(self, probs) -> None:
        """Add one flip's probabilities (a tensor, flip already undone); ``probs`` is reused."""
        self.n += 1
        if self.spread:
            squares = probs * probs
            self._squares = squares if self._squares is None else self._squares.add_(squares)
        self._sum = probs if self._sum is None else self._sum.add_(probs)

    def mean(self):
        return self._sum / self.n if self.n > 1 else self._sum

    def variance(self):
        """Population variance over the flips (0 for a single pass), clipped at 0 against
        round-off; None without ``spread``."""
        if not self.spread:
            return None
        mean = self.mean()
        return (self._squares / self.n - mean * mean).clamp_(min=0)


@dataclass
class UncertaintyMap:
    """The map on the reference grid and, per region, the volume flagged as uncertain."""

    image: sitk.Image  # float32, on exactly the reference input's grid
    uncertain_ml: Dict[str, float]
    flips: int = 8
    threshold: float = UNCERTAIN_VARIANCE

    def summary(self) -> dict:
        return {
            "measure": MEASURE.format(flips=self.flips),
            "uncertain_above": self.threshold,
            "regions": {name: {"uncertain_ml": ml} for name, ml in self.uncertain_ml.items()},
            "max": round(float(sitk.GetArrayViewFromImage(self.image).max()), 4),
        }


def region_uncertainty(
    variance: np.ndarray, tissue: np.ndarray, channels: Sequence[str], voxel_ml: float, threshold: float
) -> tuple:
    """(map, {region: uncertain mL}) from per-region variances (C, ...) on the reference grid;
    voxels without tissue (every input 0) are certain, as they are unlabelled."""
    variance = np.where(tissue, variance, 0).astype(np.float32)
    volumes = {
        name: round(float(np.count_nonzero(v >= threshold)) * voxel_ml, 3)
        for name, v in zip(channels, variance, strict=True)
    }
    return variance.max(axis=0), volumes
