"""BrainSegFounder's pretext tasks: rotation prediction, contrastive coding, masked-volume inpainting.

Per step each crop gives two views; each view is rotated by k x 90 degrees in one plane and
corrupted: random cuboids are replaced by noise (up to ``max_drop`` of the voxels) and, with
``cross_sample``, further cuboids are pasted from another crop of the batch.

The rotation plane (``ssl.rotation_plane``): ``original``, the default, is BrainSegFounder's,
the last two spatial axes of a crop (j, k); ``axial`` is the first two (i, j). Our crops are
(C, i, j, k) with i along left-right, j along anterior-posterior and k along inferior-superior
in every RAS- or LPS-type orientation the recipes use (``LoadSubject`` reorients each subject to
the recipe's orientation), and BrainSegFounder's stage-1 crops (RAS) and BraTS stage-2 crops
(the files' own LPS-type axes) are laid out the same way: so ``original`` turns each crop in
its sagittal plane (about the left-right axis) and ``axial`` in the axial plane (about the
inferior-superior axis). The rotation head of the released SSL weights was trained on the
original plane. The network predicts k, embeds the view for NT-Xent against the
other view, and reconstructs the rotated, uncorrupted view (L1).

Intensities are z-scored over the brain in pretraining exactly as in fine-tuning (the
original used a CT window, -1000..1000 -> 0..1, for MRI), so the noise is standard normal:
the scale of the data it replaces. All randomness comes from a ``numpy`` generator and a
``torch`` generator that the caller seeds from (seed, step, rank), so a resumed run corrupts
its crops exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# Axes of a (C, i, j, k) crop that each rotation plane turns. "original": BrainSegFounder's
# torch.rot90 over the last two axes of its (B, C, H, W, D) batch, the sagittal plane of RAS- and
# LPS-type crops; "axial": the plane of i and j (left-right, anterior-posterior).
ROTATION_PLANES = {"original": (2, 3), "axial": (1, 2)}


def rotate(views: torch.Tensor, rng: np.random.Generator, plane: str = "original") -> Tuple[torch.Tensor, torch.Tensor]:
    """Each (C, i, j, k) crop of ``views`` rotated by a random k x 90 degrees in ``plane`` (a key of
    ``ROTATION_PLANES``); returns (rotated, k)."""
    dims = ROTATION_PLANES[plane]
    ks = rng.integers(0, 4, size=views.shape[0])
    rotated = torch.stack([torch.rot90(v, int(k), dims=dims) for v, k in zip(views, ks, strict=True)])
    return rotated, torch.as_tensor(ks, dtype=torch.long, device=views.device)


def _cuboids(rng: np.random.Generator, shape, budget: float, max_block: float):
    """Random boxes inside ``shape`` until their total volume reaches ``budget`` voxels."""
    covered = 0
    while covered < budget:
        sides = [int(rng.integers(max(1, n // 20), max(2, int(n * max_block)) + 1)) for n in shape]
        starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sides, strict=True)]
        covered += int(np.prod(sides))
        yield tuple(slice(a, a + s) for a, s in zip(starts, sides, strict=True))


def corrupt(
    views: torch.Tensor,
    rng: np.random.Generator,
    generator: torch.Generator,
    max_drop: float = 0.3,
    max_block: float = 0.25,
    cross_sample: bool = True,
) -> torch.Tensor:
    """Inpainting input: noise cuboids, then cuboids from another crop of the batch."""
    out = views.clone()
    spatial = views.shape[2:]
    voxels = float(np.prod(spatial))
    for i in range(views.shape[0]):
        for box in _cuboids(rng, spatial, rng.uniform(0, max_drop) * voxels, max_block):
            region = out[(i, slice(None), *box)]
            region.copy_(torch.randn(region.shape, generator=generator, device=generator.device).to(region.dtype))
        partner = int(rng.integers(0, views.shape[0]))
        if cross_sample and partner != i:
            for box in _cuboids(rng, spatial, rng.uniform(0, max_drop) * voxels, max_block):
                out[(i, slice(None), *box)] = views[(partner, slice(None), *box)]
    return out


class _GatherRows(torch.autograd.Function):
    """Every process's rows (equal shapes) concatenated in rank order; the gradient of each
    process's own rows is summed over all processes' losses.

    torch.distributed.nn.functional.all_gather does the same, but on gloo its backward (an
    all-to-all built from scatters) left about one CPU process in six aborting at exit with
    "terminate called without an active exception" (torch 2.13); an all-reduce does not."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)  # every process's loss depends on every row
        return grad.chunk(torch.distributed.get_world_size())[torch.distributed.get_rank()]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = False) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views: each embedding's positive is the other view of its crop,
    every other embedding is a negative. With ``gather``, the negatives come from all processes
    (gradients flow back through the gather), not just this GPU's batch."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    offset, all1, all2 = 0, z1, z2
    if (
        gather
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        all1, all2 = _GatherRows.apply(z1), _GatherRows.apply(z2)
        offset = torch.distributed.get_rank() * n  # equal batch sizes on every rank
    total = all1.shape[0]
    queries = torch.cat([z1, z2])  # (2n, d): this process's embeddings
    keys = torch.cat([all1, all2])  # (2N, d): everyone's
    logits = queries @ keys.T / temperature
    mine = torch.arange(n, device=z1.device) + offset
    own = torch.cat([mine, mine + total])  # each query's own column
    positive = torch.cat([mine + total, mine])  # the other view of the same crop
    logits[torch.arange(2 * n, device=z1.device), own] = float("-inf")
    return F.cross_entropy(logits, positive)


@dataclass
class PretextLosses:
    rotation: torch.Tensor
    contrastive: torch.Tensor
    reconstruction: torch.Tensor
    total: torch.Tensor
    rotation_accuracy: float

    def values(self) -> dict:
        return {
            "loss": float(self.total.detach()),
            "rotation": float(self.rotation.detach()),
            "contrastive": float(self.contrastive.detach()),
            "reconstruction": float(self.reconstruction.detach()),
            "rotation_acc": self.rotation_accuracy,
        }


@dataclass
class PretextSettings:
    rotation_weight: float = 1.0
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 1.0
    temperature: float = 0.5
    gather_negatives: bool = True
    max_drop: float = 0.3
    max_block: float = 0.25
    cross_sample: bool = True
    rotation_plane: str = "original"  # a key of ROTATION_PLANES

    @classmethod
    def from_recipe(cls, ssl: dict) -> "PretextSettings":
        return cls(**{k: type(getattr(cls, k))(v) for k, v in ssl.items()})


def make_views(crops: torch.Tensor, rng: np.random.Generator, generator: torch.Generator, settings: PretextSettings):
    """Two rotated, corrupted views of each crop: (inputs (2B, ...), targets (2B, ...), k (2B,))."""
    first, k1 = rotate(crops, rng, settings.rotation_plane)
    second, k2 = rotate(crops, rng, settings.rotation_plane)
    targets = torch.cat([first, second])
    inputs = torch.cat(
        [
            corrupt(v, rng, generator, settings.max_drop, settings.max_block, settings.cross_sample)
            for v in (first, second)
        ]
    )
    return inputs, targets, torch.cat([k1, k2])


def pretext_losses(
    outputs, targets: torch.Tensor, rotations: torch.Tensor, settings: PretextSettings, gather: Optional[bool] = None
) -> PretextLosses:
    """The weighted sum of the three losses for the two views stacked as (view 1; view 2)."""
    rot_logits, embeddings, reconstruction = (o.float() for o in outputs)
    n = embeddings.shape[0] // 2
    rotation = F.cross_entropy(rot_logits, rotations)
    contrastive = nt_xent(
        embeddings[:n], embeddings[n:], settings.temperature, settings.gather_negatives if gather is None else gather
    )
    recon = F.l1_loss(reconstruction, targets.float())
    total = (
        settings.rotation_weight * rotation
        + settings.contrastive_weight * contrastive
        + settings.reconstruction_weight * recon
    )
    accuracy = float((rot_logits.argmax(1) == rotations).float().mean())
    return PretextLosses(rotation, contrastive, recon, total, accuracy)
