"""Block masks for the masked-autoencoder tasks, and the loss that sees only the masked voxels.

Both MAEs hide a share of each crop in cubes of ``block`` voxels (16 by default: one voxel of
the stride-16 stage of SwinUNETR and PCT-Net, so a block is hidden from the deep features as a
whole). Every crop hides the same number of blocks, ``round(ratio * blocks)`` (MAE's shuffle
and keep), so every crop weighs the same in the loss.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .task_checks import masked_block_count


def block_mask(batch: int, roi: Sequence[int], block: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(batch, *roi // block) bool, True = hidden; exactly ``masked_block_count`` blocks per crop."""
    grid = [int(r) // block for r in roi]
    count = masked_block_count(roi, block, ratio)
    scores = torch.rand(batch, math.prod(grid), generator=generator, device=generator.device)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, scores.argsort(dim=1)[:, :count], True)
    return mask.view(batch, *grid)


def upsample(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A (B, i, j, k) mask at ``factor`` times the resolution (each block a cube of copies)."""
    for axis in (1, 2, 3):
        mask = mask.repeat_interleave(factor, dim=axis)
    return mask


def hide(x: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, ...) with the hidden voxels set to 0: the mean of z-scored intensities."""
    return x.masked_fill(voxel_mask[:, None], 0.0)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, voxel_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden voxels only (all channels). ``torch.where``, not a
    product with the mask, so a visible voxel's prediction, even inf or nan, changes nothing."""
    hidden = voxel_mask[:, None].expand_as(prediction)
    error = torch.where(hidden, (prediction.float() - target.float()) ** 2, 0.0)
    return error.sum() / hidden.sum().clamp_min(1)
