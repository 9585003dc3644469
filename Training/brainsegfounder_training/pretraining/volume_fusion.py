"""Volume Fusion (MIS-FM, Wang et al. 2023): segment how two subjects' crops were blended.

A foreground and a background crop from two different subjects are fused voxel by voxel:
``X = alpha * fg + (1 - alpha) * bg`` with ``alpha = c / K``, where c in 0..K is drawn per box:
10-40 random boxes (sides 1/16 to 5/8 of the crop side, the paper's 8-40 and 8-80 voxels of a
64x128x128 crop) are laid down in turn, a later box over an earlier one, each with a class c in
1..K; voxels under no box keep c = 0 (pure background). The network segments the (K+1)-class
map of c, so it must tell the two anatomies apart everywhere: MIS-FM's loss is (Dice + CE) / 2.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch


def partners(ids: Sequence[str], crops_per_volume: int) -> List[int]:
    """For each crop of a batch (volumes in order, ``crops_per_volume`` each), the index of a crop
    of the next volume from another subject (the same subject only if the batch holds no other)."""
    n = len(ids)
    chosen = []
    for v in range(n):
        other = next((u % n for u in range(v + 1, v + n) if ids[u % n] != ids[v]), (v + 1) % n)
        chosen.append(other)
    per = crops_per_volume
    return [chosen[i // per] * per + i % per for i in range(n * per)]


def class_map(
    shape: Sequence[int], rng: np.random.Generator, classes: int, boxes: Tuple[int, int], box_size: Tuple[float, float]
) -> np.ndarray:
    """One crop's map of c (int64, 0 = no box): ``boxes`` = (fewest, most) boxes, ``box_size`` = a
    box side's (smallest, largest) share of the crop side."""
    labels = np.zeros(tuple(shape), dtype=np.int64)
    for _ in range(int(rng.integers(boxes[0], boxes[1] + 1))):
        box = []
        for n in shape:
            low, high = max(1, round(box_size[0] * n)), max(1, round(box_size[1] * n))
            side = int(rng.integers(low, high + 1))
            start = int(rng.integers(0, n - side + 1))
            box.append(slice(start, start + side))
        labels[tuple(box)] = int(rng.integers(1, classes + 1))
    return labels


def fuse(
    foreground: torch.Tensor,
    background: torch.Tensor,
    rng: np.random.Generator,
    classes: int = 4,
    boxes: Tuple[int, int] = (10, 40),
    box_size: Tuple[float, float] = (1 / 16, 5 / 8),
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fused (B, C, ...), class map (B, 1, ...) int64) of two equally shaped batches of crops."""
    spatial = foreground.shape[2:]
    labels = np.stack([class_map(spatial, rng, classes, boxes, box_size) for _ in range(foreground.shape[0])])
    labels = torch.from_numpy(labels).to(foreground.device)[:, None]
    alpha = labels.to(foreground.dtype) / classes
    return alpha * foreground + (1 - alpha) * background, labels


def fusion_loss():
    """MIS-FM's loss: (Dice + cross-entropy) / 2 over the K + 1 classes (softmax)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)
