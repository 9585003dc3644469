"""Region overlap, as the engine reports it (the demo) and the training pipeline builds on."""

from __future__ import annotations

import numpy as np


def region_dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """MONAI Dice per channel of binary (R, ...) arrays; 1 where both are empty (BraTS's rule)."""
    import torch
    from monai.metrics import compute_dice

    p = torch.as_tensor(np.asarray(pred, dtype=np.float32))[None]
    t = torch.as_tensor(np.asarray(true, dtype=np.float32))[None]
    return compute_dice(p, t, include_background=True, ignore_empty=False)[0].numpy().astype(float)
