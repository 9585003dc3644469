"""nnU-Net's residual-encoder U-Net, built from ``dynamic-network-architectures``.

The package is the reference implementation (nnU-Net and nnssl build their ResEnc networks
with it), so weights keep its state-dict names. Only its ``ResidualEncoderUNet`` is used,
which needs torch alone (the package's timm dependency serves its transformer networks).
"""

from __future__ import annotations

from .errors import UserError
from .networks import ResEncUNetConfig


def build_resenc_unet(config: ResEncUNetConfig):
    """The network for ``config`` (weights random, deep supervision off)."""
    try:
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    except ImportError:
        raise UserError(
            "ResEncUNet models need the package dynamic-network-architectures; "
            "install it with: pip install --no-deps 'dynamic-network-architectures>=0.4,<0.5'"
        ) from None
    from torch import nn

    stages = len(config.blocks_per_stage)
    net = ResidualEncoderUNet(
        input_channels=config.in_channels,
        n_stages=stages,
        features_per_stage=list(config.features_per_stage),
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        n_blocks_per_stage=list(config.blocks_per_stage),
        num_classes=config.out_channels,
        n_conv_per_stage_decoder=[1] * (stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    # Without deep supervision only the last segmentation layer is used; the others stay in the
    # state dict (nnU-Net's layout) but take no gradient, which would stall DDP's reduction.
    for layer in list(net.decoder.seg_layers)[:-1]:
        layer.requires_grad_(False)
    return net
