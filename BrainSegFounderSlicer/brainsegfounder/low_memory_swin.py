"""Inference-only SwinUNETR with a lower memory peak, same weights, same maths.

At a 128^3 window the peak is in the full-resolution decoder: MONAI's forward keeps every
skip tensor until it returns, and each instance norm writes a new full-size tensor beside
the convolution output it normalises. Here skips are computed just before their decoder
and dropped once concatenated, and the instance norms (no affine, no running statistics in
SwinUNETR v1) normalise the convolution output in place. The result equals MONAI's forward
to float round-off; the network must only be used for inference afterwards.
"""

from __future__ import annotations

import torch
from torch import nn


class InPlaceInstanceNorm(nn.Module):
    """Instance norm of a tensor nobody else holds, written over it. Statistics in float32
    whatever the tensor's precision (as autocast computes instance norm)."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for n in range(x.shape[0]):  # one (sample, channel) view at a time: no full-size float32 copy
            for c in range(x.shape[1]):
                part = x[n, c]
                var, mean = torch.var_mean(part.float(), unbiased=False)
                part.sub_(mean.to(part.dtype)).mul_(torch.rsqrt(var + self.eps).to(part.dtype))
        return x


def _up(block, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """MONAI's UnetrUpBlock, letting go of the upsampled tensor and the skip once concatenated."""
    joined = torch.cat((block.transp_conv(low), skip), dim=1)
    del low, skip
    return block.conv_block(joined)


class LowMemorySwinUNETR(nn.Module):
    """Wraps a MONAI SwinUNETR v1 for inference (the wrapped module's weights are used as they are)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.InstanceNorm3d) and not child.affine and not child.track_running_stats:
                    setattr(parent, name, InPlaceInstanceNorm(child.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        hidden = list(net.swinViT(x, net.normalize))
        out = _up(net.decoder5, net.encoder10(hidden.pop(4)), hidden.pop(3))
        for decoder, encoder, level in (
            (net.decoder4, net.encoder4, 2),
            (net.decoder3, net.encoder3, 1),
            (net.decoder2, net.encoder2, 0),
        ):
            out = _up(decoder, out, encoder(hidden.pop(level)))
        return net.out(_up(net.decoder1, out, net.encoder1(x)))
