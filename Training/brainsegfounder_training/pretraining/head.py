"""The SSL head on SwinUNETR's Swin encoder, laid out so BrainSegFounder's released SSL
checkpoints load into it strictly.

Key layout (``module.`` prefix stripped by the loader)::

    swinViT.*                       the Swin encoder, exactly SwinUNETR's ``swinViT``
    rotation_head.{weight,bias}     Linear(16f, 4) on bottleneck token 0
    contrastive_head.{weight,bias}  Linear(16f, 512) on bottleneck token 1
    conv.{0,4,8,12,16,20}.*         reconstruction: 5 x [Conv3d 3^3, InstanceNorm, LeakyReLU,
                                    trilinear x2], channels 16f -> 8f -> 4f -> 2f -> f -> f,
                                    then a 1^3 conv to the input channels

(f = feature size; 16f = 768 for BrainSegFounder's f48). InstanceNorm without affine
parameters keeps the index pattern 0, 4, 8, ... of the release.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import List

import torch
from torch import nn

from brainsegfounder.checkpoints import ENCODER_PREFIX, SSL_HEAD_PREFIXES, load_strict
from brainsegfounder.errors import UserError
from brainsegfounder.networks import NEW_MODEL_MERGE_ORDER, SIZES, NetworkConfig, build_network

from ..harness.initial_weights import InitReport, inflate

ROTATIONS = 4
CONTRASTIVE_DIM = 512
RECONSTRUCTION_OUT = "conv.20."  # the 1^3 conv whose outputs are the input channels
MASK_TOKEN = "mask_token"  # brainsegfounder+swin-mae's (see tasks.SSLHeadWithMaskToken)


def reconstruction_decoder(dim: int, out_channels: int) -> nn.Sequential:
    channels = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
    layers: List[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers += [
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
            nn.InstanceNorm3d(c_out),
            nn.LeakyReLU(),
            nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
        ]
    layers.append(nn.Conv3d(channels[-1], out_channels, kernel_size=1))
    return nn.Sequential(*layers)


class SSLHead(nn.Module):
    """Swin encoder + rotation, contrastive and reconstruction heads.

    ``forward(x)`` -> (rotation logits (B, 4), contrastive embedding (B, 512),
    reconstruction (B, C, *x.shape[2:])). Inputs are multiples of 32 per side (the
    bottleneck is 1/32 of the crop and needs at least two tokens).
    """

    def __init__(self, config: NetworkConfig, use_checkpoint: bool = False, use_flash_attention: bool = False):
        super().__init__()
        # The encoder is taken from a SwinUNETR built from the same config, so its keys and
        # shapes are by construction those a fine-tuning run loads (one definition, not two);
        # SwinUNETR needs an output channel to build, and the decoder it builds is dropped.
        self.swinViT = build_network(
            replace(config, out_channels=max(1, config.out_channels)),
            use_checkpoint=use_checkpoint,
            use_flash_attention=use_flash_attention,
        ).swinViT
        dim = 16 * config.feature_size
        self.config = config
        self.rotation_head = nn.Linear(dim, ROTATIONS)
        self.contrastive_head = nn.Linear(dim, CONTRASTIVE_DIM)
        self.conv = reconstruction_decoder(dim, config.in_channels)

    def forward(self, x: torch.Tensor):
        bottleneck = self.swinViT(x.contiguous())[4]  # (B, 16f, h, w, d)
        tokens = bottleneck.flatten(2).transpose(1, 2)  # (B, h*w*d, 16f)
        return self.rotation_head(tokens[:, 0]), self.contrastive_head(tokens[:, 1]), self.conv(bottleneck)


def ssl_network_config(
    in_channels: int, depths, num_heads, feature_size: int, merge_order: str = NEW_MODEL_MERGE_ORDER
) -> NetworkConfig:
    """The encoder's config; ``out_channels=0`` marks a checkpoint without a segmentation decoder."""
    return NetworkConfig(
        in_channels=in_channels,
        out_channels=0,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        feature_size=int(feature_size),
        merge_order=merge_order,
    )


def ssl_config_of_recipe(recipe: dict, init_ckpt) -> NetworkConfig:
    """The encoder a pretraining recipe asks for: ``model.size``, or the init checkpoint's
    architecture (``auto``); a named size must match the init checkpoint's."""
    size = recipe["model"]["size"]
    channels = len(recipe["modalities"])
    if size == "auto":
        net = init_ckpt.network
        return ssl_network_config(channels, net.depths, net.num_heads, net.feature_size, net.merge_order)
    if size not in SIZES:
        raise UserError(f"unknown model.size {size!r}; choose {', '.join(SIZES)} or auto")
    # Started from a checkpoint, the encoder keeps the merge order its weights were trained with.
    order = init_ckpt.network.merge_order if init_ckpt is not None else NEW_MODEL_MERGE_ORDER
    config = ssl_network_config(channels, **SIZES[size], merge_order=order)
    if init_ckpt is not None:
        theirs = (init_ckpt.network.depths, init_ckpt.network.num_heads, init_ckpt.network.feature_size)
        if theirs != (config.depths, config.num_heads, config.feature_size):
            raise UserError(
                f"the init checkpoint is depths {list(theirs[0])}, heads {list(theirs[1])}, feature size "
                f"{theirs[2]}, but model.size {size} differs; set model.size=auto or the matching size"
            )
    return config


PATCH_EMBED = "swinViT.patch_embed.proj.weight"


def load_into_head(head: SSLHead, ckpt, target_modalities, source_modalities=None):
    """Start ``head`` from a checkpoint (stage 1 for stage 2, BrainSegFounder's SSL release, or
    a fine-tuned model's encoder). Every encoder tensor is loaded; the patch embedding is
    inflated when the channels differ and the reconstruction layer's output rows are mapped by
    modality (never re-drawn at random). Head tensors a checkpoint lacks (a fine-tuned model
    has none) start fresh and are reported. Returns an InitReport."""
    report = InitReport(source=str(ckpt.path), kind=ckpt.kind)
    source_modalities = ckpt.meta.modalities if ckpt.meta is not None else source_modalities
    target = head.state_dict()
    state = dict(target)
    for key, value in ckpt.state_dict.items():
        if not key.startswith((ENCODER_PREFIX, *SSL_HEAD_PREFIXES)) and not (key == MASK_TOKEN and key in target):
            report.ignored.append(key)  # a fine-tuned model's decoder
            continue
        if key not in target:
            raise UserError(
                f"{ckpt.path.name} has {key}, which this network lacks; it is a different architecture "
                "(check model.size)"
            )
        wanted = target[key].shape
        if key == PATCH_EMBED and value.shape[1] != wanted[1] and value.shape[2:] == wanted[2:]:
            state[key], report.inflated[key] = inflate(value.float(), source_modalities, target_modalities)
        elif key.startswith(RECONSTRUCTION_OUT) and value.shape[0] != wanted[0] and value.shape[1:] == wanted[1:]:
            state[key], report.inflated[key] = inflate(
                value.float(), source_modalities, target_modalities, axis=0, scale=False
            )
        elif value.shape == wanted:
            state[key] = value
        else:
            raise UserError(
                f"{ckpt.path.name}: {key} has shape {tuple(value.shape)}, this network "
                f"{tuple(wanted)}; it is a different architecture (check model.size)"
            )
        report.loaded.append(key)
    missing = sorted(k for k in target if k.startswith(ENCODER_PREFIX) and k not in ckpt.state_dict)
    if missing:
        raise UserError(
            f"{ckpt.path.name} lacks {len(missing)} encoder tensors ({', '.join(missing[:3])}); "
            "it is a different architecture"
        )
    report.reinitialised = sorted(k for k in target if k.startswith(SSL_HEAD_PREFIXES) and k not in ckpt.state_dict)
    load_strict(head, state, f"initialisation from {ckpt.path.name}")
    report.loaded.sort()
    report.ignored.sort()
    return report
