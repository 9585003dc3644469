"""What each pretext task needs of its backbone and crop, checked before torch is imported (a
bad recipe costs a fraction of a second); :mod:`.tasks` implements the tasks."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from brainsegfounder.errors import UserError

SWIN_ONLY = ("brainsegfounder", "swin-mae", "brainsegfounder+swin-mae")  # on SwinUNETR's Swin encoder
TASK_NAMES = (*SWIN_ONLY, "mae", "volume-fusion", "volume-fusion+mae")
# What to run on another backbone instead of a Swin-only task.
CNN_ALTERNATIVE = {"swin-mae": "mae", "brainsegfounder+swin-mae": "volume-fusion+mae"}


def check_backbone(task: str, architecture: Optional[str]) -> None:
    """A Swin-only task on another architecture is one line naming the alternative."""
    if task in SWIN_ONLY and architecture not in (None, "SwinUNETR"):
        other = CNN_ALTERNATIVE.get(task, "mae or volume-fusion")
        raise UserError(
            f"task {task} works on SwinUNETR's Swin encoder, not a {architecture}; set "
            f"model.architecture=swinunetr, or task {other} for a {architecture}"
        )


def masked_block_count(roi: Sequence[int], block: int, ratio: float) -> int:
    """Blocks an MAE hides per crop; a crop not made of whole blocks, or a ratio that hides none
    or all of them, is a one-line error."""
    if any(int(r) % block for r in roi):
        raise UserError(
            f"model.roi {'x'.join(map(str, roi))} is not divisible by mae.block {block}; "
            f"choose crop sides that are multiples of {block}"
        )
    blocks = math.prod(int(r) // block for r in roi)
    hidden = round(ratio * blocks)
    if not 0 < hidden < blocks:
        raise UserError(
            f"mae.mask_ratio {ratio:g} hides {hidden} of the {blocks} blocks of {block}^3 in a "
            f"{'x'.join(map(str, roi))} crop; the MAE needs some blocks hidden and some visible (e.g. 0.75)"
        )
    return hidden
