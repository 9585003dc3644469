"""SwinUNETR v1's "merging" downsampling with its merge order written down, not taken from MONAI.

Each merging step concatenates the eight sub-grids of every 2x2x2 block of tokens, then
normalises and projects them (LayerNorm, Linear 8C -> 2C). The order of the eight decides
which weights see which voxel, so a checkpoint computes its function only in the order it was
trained with. MONAI changed that order in 1.5 ("Fix PatchMerging duplicate merging"):

* ``monai0.9``: MONAI 0.9 to 1.4, which BrainSegFounder (and every SwinUNETR v1 checkpoint
  published before 2025) was trained with. Offsets (d, h, w) 000, 100, 010, 001, 101, 010,
  001, 111: 010 and 001 appear twice, 110 and 011 never.
* ``monai1.5``: MONAI 1.5 and later: the eight distinct offsets 000, 100, 010, 001, 110, 101,
  011, 111. The order of new models (every voxel of the block reaches the projection).

Loaded into MONAI >= 1.5 as it is, a BrainSegFounder checkpoint runs without a warning but
computes another function (its logits moved by up to 0.3 on a 128^3 window; see
Testing/engine/test_swin_reference.py). The module here keeps the names and shapes of MONAI's
(``norm``, ``reduction``), so state dicts are the same whichever order is used.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Offsets = Tuple[Tuple[int, int, int], ...]

MERGE_ORDERS: Dict[str, Offsets] = {
    "monai0.9": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)),
    "monai1.5": ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)),
}


class OrderedPatchMerging(nn.Module):
    """Patch merging of channels-last (B, D, H, W, C) tokens in a stated order; odd sides are
    padded at the end with zeros (as MONAI does)."""

    def __init__(self, norm: nn.Module, reduction: nn.Module, order: str):
        super().__init__()
        self.norm = norm
        self.reduction = reduction
        self.order = order
        self.offsets = MERGE_ORDERS[order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected (B, D, H, W, C) tokens, got shape {tuple(x.shape)}")
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in self.offsets], -1)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"order={self.order}"


def set_merge_order(swin_vit: nn.Module, order: str) -> None:
    """Replace every patch-merging layer of a MONAI ``SwinTransformer`` by one in ``order``,
    keeping its parameters (the module's state dict is unchanged)."""
    if order not in MERGE_ORDERS:
        raise ValueError(f"unknown merge order {order!r}; choose one of {', '.join(MERGE_ORDERS)}")
    for stage in (swin_vit.layers1, swin_vit.layers2, swin_vit.layers3, swin_vit.layers4):
        layer = stage[0]
        merging = layer.downsample
        if merging is not None:
            layer.downsample = OrderedPatchMerging(merging.norm, merging.reduction, order)
