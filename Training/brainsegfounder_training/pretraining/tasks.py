"""The pretext tasks a pretraining run learns (``task`` in the recipe, ``--task`` on the CLI).

=========================  ==========================  ============================================
task                       backbones                   what one step computes
=========================  ==========================  ============================================
brainsegfounder            SwinUNETR (Swin encoder)    rotation + contrastive + inpainting (pretext)
swin-mae                   SwinUNETR (Swin encoder)    VIS-MAE in 3D: mask token, light decoder
mae                        every one                   3D MAE (Wald et al.): the input masked
volume-fusion              every one                   MIS-FM: segment the fusion coefficients
brainsegfounder+swin-mae   SwinUNETR (Swin encoder)    both, one forward pass, ssl.* and mae.weight
volume-fusion+mae          every one                   both, one forward pass, weights in the recipe
=========================  ==========================  ============================================

A combination runs its tasks' inputs as one batch through one network and adds the weighted
losses; each task keeps its own input (a fused crop is not masked, a masked crop is not fused).
A task is an object made from the recipe: it builds its network, computes a step's losses and
names the validation loss that picks the best model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from brainsegfounder.errors import UserError
from brainsegfounder.networks import ArchitectureConfig, build_network

from .head import SSLHead
from .masking import block_mask, hide, masked_mse, upsample
from .pretext import PretextSettings, make_views, pretext_losses
from .swin_mae import SwinMAE, encode_with_mask_token, new_mask_token
from .task_checks import check_backbone, masked_block_count
from .volume_fusion import fuse, fusion_loss, partners


@dataclass
class StepLosses:
    total: torch.Tensor  # what is minimised
    values: Dict[str, float]  # "loss" and each part, for the log


class Pretext:
    """One task, made from a recipe. ``selection``: the validation loss best.pt minimises."""

    name = ""
    selection = "loss"
    selection_label = "loss"
    description = ""

    def __init__(self, recipe: dict):
        self.recipe = recipe
        self.roi = tuple(int(r) for r in recipe["model"]["roi"])
        self.channels = len(recipe["modalities"])

    def out_channels(self) -> int:
        """The network's outputs (0: an encoder with heads, no segmentation decoder)."""
        return 0

    def output_rows(self) -> Optional[Tuple[int, int]]:
        """Where the output layer's rows are per input channel, mapped by modality when the inputs
        change (stage 2): (leading rows that are not, rows per channel); None: none are."""
        return None

    def build(self, config: ArchitectureConfig, use_checkpoint: bool, use_flash_attention: bool) -> nn.Module:
        return build_network(config, use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention)

    def losses(self, net, crops, ids, rng, generator, autocast: Callable, gather: Optional[bool] = None) -> StepLosses:
        raise NotImplementedError


class _Masking:
    """What both MAEs share: the recipe's block masks."""

    def _mae_settings(self, recipe: dict) -> None:
        mae = recipe["mae"]
        self.block, self.ratio, self.mae_weight = int(mae["block"]), float(mae["mask_ratio"]), float(mae["weight"])
        masked_block_count(self.roi, self.block, self.ratio)  # a ratio that hides none or all: one line, now

    def _masks(self, n: int, generator):
        hidden = block_mask(n, self.roi, self.block, self.ratio, generator)
        return hidden, upsample(hidden, self.block)


class BrainSegFounder(Pretext):
    name = "brainsegfounder"
    selection, selection_label = "reconstruction", "reconstruction L1"
    description = "rotation + contrastive (NT-Xent) + inpainting (L1)"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self.settings = PretextSettings.from_recipe(recipe["ssl"])
        s = self.settings
        self.description += f", weights {s.rotation_weight:g}:{s.contrastive_weight:g}:{s.reconstruction_weight:g}"

    def build(self, config, use_checkpoint, use_flash_attention):
        return SSLHead(config, use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention)

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        inputs, targets, rotations = make_views(crops, rng, generator, self.settings)
        with autocast():
            outputs = net(inputs)
        found = pretext_losses(outputs, targets, rotations, self.settings, gather)
        return StepLosses(found.total, found.values())


class SSLHeadWithMaskToken(SSLHead):
    """BrainSegFounder's SSL head and a mask token: ``forward(x, block_mask)`` hides blocks of the
    crops the mask marks (rows of zeros: none) at the patch embedding, as :class:`SwinMAE` does."""

    def __init__(self, config, block: int, use_checkpoint=False, use_flash_attention=False):
        super().__init__(config, use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention)
        self.block = block
        self.mask_token = new_mask_token(config.feature_size)

    def forward(self, x, block_mask=None):
        patch = self.config.patch_size
        bottleneck = encode_with_mask_token(self.swinViT, self.mask_token, x, block_mask, self.block, patch)[4]
        tokens = bottleneck.flatten(2).transpose(1, 2)
        return self.rotation_head(tokens[:, 0]), self.contrastive_head(tokens[:, 1]), self.conv(bottleneck)


class BrainSegFounderWithSwinMAE(BrainSegFounder, _Masking):
    """The two rotated, corrupted views of each crop (BrainSegFounder's three losses) and the crop
    itself with 75% of its blocks behind the mask token (MSE of the reconstruction head on them)."""

    name = "brainsegfounder+swin-mae"
    selection, selection_label = "loss", "weighted loss"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self._mae_settings(recipe)
        self.description += f" + mask-token MAE (MSE on hidden blocks), weight {self.mae_weight:g}"

    def build(self, config, use_checkpoint, use_flash_attention):
        return SSLHeadWithMaskToken(config, self.block, use_checkpoint, use_flash_attention)

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        inputs, targets, rotations = make_views(crops, rng, generator, self.settings)
        hidden, voxels = self._masks(crops.shape[0], generator)
        visible = torch.zeros((inputs.shape[0], *hidden.shape[1:]), dtype=torch.bool, device=hidden.device)
        with autocast():
            outputs = net(torch.cat([inputs, crops]), torch.cat([visible, hidden]))
        n = inputs.shape[0]
        found = pretext_losses([o[:n] for o in outputs], targets, rotations, self.settings, gather)
        mae = masked_mse(outputs[2][n:], crops, voxels)
        total = found.total + self.mae_weight * mae
        return StepLosses(total, {**found.values(), "loss": float(total.detach()), "mae": float(mae.detach())})


class SwinMaskedAutoencoder(Pretext, _Masking):
    name = "swin-mae"
    selection, selection_label = "mae", "masked MSE"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self._mae_settings(recipe)
        self.description = f"mask-token MAE (VIS-MAE in 3D): {self.ratio:.0%} of {self.block}^3 blocks, MSE"

    def output_rows(self):
        return 0, 16**3  # the light decoder's 16^3 voxels per channel

    def build(self, config, use_checkpoint, use_flash_attention):
        return SwinMAE(config, self.block, use_checkpoint, use_flash_attention)

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        hidden, voxels = self._masks(crops.shape[0], generator)
        with autocast():
            prediction = net(crops, hidden)
        mae = masked_mse(prediction, crops, voxels)
        return StepLosses(mae, {"loss": float(mae.detach()), "mae": float(mae.detach())})


class MaskedAutoencoder(Pretext, _Masking):
    name = "mae"
    selection, selection_label = "mae", "masked MSE"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self._mae_settings(recipe)
        self.description = f"3D MAE: {self.ratio:.0%} of {self.block}^3 input blocks zeroed, MSE on them"

    def out_channels(self):
        return self.channels

    def output_rows(self):
        return 0, 1

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        _, voxels = self._masks(crops.shape[0], generator)
        with autocast():
            prediction = net(hide(crops, voxels))
        mae = masked_mse(prediction, crops, voxels)
        return StepLosses(mae, {"loss": float(mae.detach()), "mae": float(mae.detach())})


class _Fusion:
    def _fusion_settings(self, recipe: dict) -> None:
        vf = recipe["volume_fusion"]
        self.classes, self.fusion_weight = int(vf["classes"]), float(vf["weight"])
        self.boxes = tuple(int(b) for b in vf["boxes"])
        self.box_size = tuple(float(s) for s in vf["box_size"])
        self.crops_per_volume = int(recipe["train"]["crops_per_volume"])
        self.criterion = fusion_loss()

    def _fused(self, crops, ids, rng):
        background = crops[partners(ids, self.crops_per_volume)]
        return fuse(crops, background, rng, self.classes, self.boxes, self.box_size)

    def _fusion_loss(self, logits, labels):
        loss = self.criterion(logits.float(), labels)
        accuracy = float((logits.argmax(1, keepdim=True) == labels).float().mean())
        return loss, accuracy


class VolumeFusion(Pretext, _Fusion):
    name = "volume-fusion"
    selection, selection_label = "fusion", "fusion (Dice + CE) / 2"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self._fusion_settings(recipe)
        self.description = (
            f"Volume Fusion: {self.boxes[0]}-{self.boxes[1]} boxes, {self.classes + 1} coefficient classes, "
            "(Dice + CE) / 2"
        )

    def out_channels(self):
        return self.classes + 1

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        fused, labels = self._fused(crops, ids, rng)
        with autocast():
            logits = net(fused)
        loss, accuracy = self._fusion_loss(logits, labels)
        return StepLosses(loss, {"loss": float(loss.detach()), "fusion": float(loss.detach()), "fusion_acc": accuracy})


class VolumeFusionWithMAE(Pretext, _Fusion, _Masking):
    """Fused crops and masked crops in one batch; the network's outputs are the K + 1 fusion
    classes, then one reconstruction channel per input."""

    name = "volume-fusion+mae"
    selection, selection_label = "loss", "weighted loss"

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        self._fusion_settings(recipe)
        self._mae_settings(recipe)
        self.description = (
            f"Volume Fusion (weight {self.fusion_weight:g}) + 3D MAE ({self.ratio:.0%} of {self.block}^3 "
            f"blocks, weight {self.mae_weight:g})"
        )

    def out_channels(self):
        return self.classes + 1 + self.channels

    def output_rows(self):
        return self.classes + 1, 1

    def losses(self, net, crops, ids, rng, generator, autocast, gather=None) -> StepLosses:
        fused, labels = self._fused(crops, ids, rng)
        _, voxels = self._masks(crops.shape[0], generator)
        with autocast():
            outputs = net(torch.cat([fused, hide(crops, voxels)]))
        n, k = crops.shape[0], self.classes + 1
        fusion, accuracy = self._fusion_loss(outputs[:n, :k], labels)
        mae = masked_mse(outputs[n:, k:], crops, voxels)
        total = self.fusion_weight * fusion + self.mae_weight * mae
        values = {"loss": float(total.detach()), "fusion": float(fusion.detach()), "fusion_acc": accuracy}
        return StepLosses(total, {**values, "mae": float(mae.detach())})


TASKS = {
    t.name: t
    for t in (
        BrainSegFounder,
        BrainSegFounderWithSwinMAE,
        SwinMaskedAutoencoder,
        MaskedAutoencoder,
        VolumeFusion,
        VolumeFusionWithMAE,
    )
}


def pretext_task(recipe: dict) -> Pretext:
    """The recipe's task, its settings checked (a bad one is one line)."""
    name = recipe["task"]
    if name not in TASKS:
        raise UserError(f"unknown pretraining task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](recipe)


def check_task_fits(task: Pretext, config: ArchitectureConfig) -> None:
    """A task that needs the Swin encoder refuses other backbones (once the backbone is known)."""
    check_backbone(task.name, config.NAME)
