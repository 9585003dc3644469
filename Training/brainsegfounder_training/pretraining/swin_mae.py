"""Masked autoencoding for the Swin encoder (VIS-MAE, in 3D): a learned mask token.

VIS-MAE replaces 75% of its 2D Swin's patch embeddings, in windows of 4x4 patches, by one
learned mask token and regresses the hidden pixels. Here the windows are 16^3-voxel blocks
(8^3 patches of SwinUNETR's stride-2 patch embedding), each exactly one voxel of the stride-16
stage. Only the Swin encoder sees the crop (not SwinUNETR's convolutional skips, which would
show the decoder the hidden voxels), and only through its patch embedding, so nothing of a
hidden block reaches the network but its position.

The decoder is light on purpose (MAE, SimMIM: a light decoder leaves the representation to the
encoder, which is what fine-tuning keeps): the stride-32 bottleneck is upsampled once
(transposed 2^3 convolution) and added to the stride-16 tokens, and one linear layer (a 1^3
convolution) predicts each token's 16^3 voxels per channel, laid out by a voxel shuffle. For
BrainSegFounder's 62M encoder and 2 inputs it has 5.5M parameters against the encoder's 62M,
and it runs at 1/16 of the resolution; SwinUNETR's own decoder would run convolutions at full
resolution on skips that must not see the crop.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from brainsegfounder.networks import SwinUNETRConfig, build_network

from .masking import upsample

TOKEN_STRIDE = 16  # the stage whose voxels the decoder expands: 16^3 voxels each


def encode_with_mask_token(swin, token: nn.Parameter, x: torch.Tensor, block_mask, block: int, patch: int):
    """The Swin encoder's hidden states (its five stages) for ``x`` with the patch embeddings of
    the hidden blocks (``block_mask`` (B, *grid) bool, None: none) replaced by ``token``."""
    if block_mask is None:
        return swin(x.contiguous())

    def replace_hidden(_module, _inputs, embedded):  # (B, f, *roi / patch)
        hidden = upsample(block_mask, block // patch)[:, None]
        return torch.where(hidden, token.view(1, -1, 1, 1, 1).to(embedded.dtype), embedded)

    handle = swin.patch_embed.register_forward_hook(replace_hidden)
    try:
        return swin(x.contiguous())
    finally:
        handle.remove()


def voxel_shuffle(x: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """(B, channels * f^3, d, h, w) -> (B, channels, d * f, h * f, w * f)."""
    b, _, d, h, w = x.shape
    x = x.view(b, channels, factor, factor, factor, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, channels, d * factor, h * factor, w * factor)


class LightDecoder(nn.Module):
    """Bottleneck (16f, 1/32) up once + stride-16 tokens (8f, 1/16) -> 16^3 voxels per token."""

    def __init__(self, feature_size: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.up = nn.ConvTranspose3d(16 * feature_size, 8 * feature_size, kernel_size=2, stride=2)
        self.project = nn.Conv3d(8 * feature_size, out_channels * TOKEN_STRIDE**3, kernel_size=1)

    def forward(self, bottleneck: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return voxel_shuffle(self.project(self.up(bottleneck) + tokens), TOKEN_STRIDE, self.out_channels)


def new_mask_token(feature_size: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(feature_size), std=0.02))


class SwinMAE(nn.Module):
    """SwinUNETR's Swin encoder with a mask token and the light decoder.

    ``forward(x, block_mask)`` -> the reconstruction (B, C, *x.shape[2:]). State-dict names:
    ``swinViT.*`` (what fine-tuning loads), ``mask_token``, ``decoder.*``."""

    def __init__(self, config: SwinUNETRConfig, block: int = 16, use_checkpoint=False, use_flash_attention=False):
        super().__init__()
        self.swinViT = build_network(
            replace(config, out_channels=max(1, config.out_channels)),
            use_checkpoint=use_checkpoint,
            use_flash_attention=use_flash_attention,
        ).swinViT  # the encoder of the SwinUNETR fine-tuning builds, by construction the same keys
        self.block, self.patch = block, config.patch_size
        self.mask_token = new_mask_token(config.feature_size)
        self.decoder = LightDecoder(config.feature_size, config.in_channels)

    def forward(self, x: torch.Tensor, block_mask=None) -> torch.Tensor:
        hidden = encode_with_mask_token(self.swinViT, self.mask_token, x, block_mask, self.block, self.patch)
        return self.decoder(hidden[4], hidden[3])
