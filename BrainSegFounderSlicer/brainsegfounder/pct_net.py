"""PCT-Net, MIS-FM's parallel convolution + Swin transformer U-Net, on torch and MONAI blocks.

Written from the description of Wang et al. (MIS-FM, 2023): convolutions at full and half
resolution, a convolutional patch embedding down to 1/4, three stages (1/4, 1/8, 1/16) in
which a convolution branch (local detail) and a Swin transformer branch (context across
windows) see the same input and are fused, and a U-shaped decoder that upsamples and
concatenates the skip of each level (BatchNorm + PReLU). The Swin branch is MONAI's
``BasicLayer`` (shifted windows, relative position bias), as SwinUNETR's stages are.
"""

from __future__ import annotations

from typing import List

import torch
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

from .networks import PCTNetConfig


def conv_norm_act(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> List[nn.Module]:
    return [
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.PReLU(out_channels),
    ]


class ConvBlock(nn.Module):
    """Two 3x3x3 convolutions, each with BatchNorm and PReLU; the first may stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            *conv_norm_act(in_channels, out_channels, stride=stride), *conv_norm_act(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ParallelStage(nn.Module):
    """A convolution branch and a Swin branch on the same (downsampled) features, joined by a
    1x1x1 convolution over both, added to their input."""

    def __init__(
        self,
        config: PCTNetConfig,
        stage: int,
        drop_path: List[float],
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
    ):
        super().__init__()
        channels = config.features[2 + stage]
        in_channels, stride = (channels, 1) if stage == 0 else (config.features[1 + stage], 2)
        self.down = nn.Sequential(*conv_norm_act(in_channels, channels, stride=stride)) if stride > 1 else nn.Identity()
        self.conv = ConvBlock(channels, channels)
        self.swin = BasicLayer(
            dim=channels,
            depth=config.depths[stage],
            num_heads=config.num_heads[stage],
            window_size=(config.window_size,) * 3,
            drop_path=drop_path,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            downsample=None,
            use_checkpoint=use_checkpoint,
            use_flash_attention=use_flash_attention,
        )
        self.fuse = nn.Sequential(*conv_norm_act(2 * channels, channels, kernel=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.fuse(torch.cat((self.conv(x), self.swin(x)), dim=1))


class UpCat(nn.Module):
    """Upsample the deeper features to the skip's level, concatenate, convolve."""

    def __init__(self, low_channels: int, skip_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(low_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, skip_channels)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((self.up(low), skip), dim=1))


class PCTNet(nn.Module):
    def __init__(self, config: PCTNetConfig, use_checkpoint: bool = False, use_flash_attention: bool = False):
        super().__init__()
        f = config.features
        self.stem = nn.ModuleList(
            [ConvBlock(config.in_channels, f[0]), ConvBlock(f[0], f[1], stride=2), ConvBlock(f[1], f[2], stride=2)]
        )
        rates = torch.linspace(0, config.drop_path, sum(config.depths)).tolist()
        starts = [sum(config.depths[:i]) for i in range(3)]
        self.stages = nn.ModuleList(
            ParallelStage(
                config, i, rates[starts[i] : starts[i] + config.depths[i]], use_checkpoint, use_flash_attention
            )
            for i in range(3)
        )
        self.ups = nn.ModuleList(UpCat(f[i + 1], f[i]) for i in reversed(range(4)))
        self.head = nn.Conv3d(f[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in self.stem[:2]:
            x = level(x)
            skips.append(x)
        x = self.stem[2](x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
