"""Model factory: the architectures a model may be, their named sizes, and task presets.

Three architectures, each described by a config that checkpoints store as metadata
(``meta.network``, with an ``architecture`` field naming which) and that builds the network:

* ``SwinUNETR``: BrainSegFounder's network, MONAI's SwinUNETR v1 (instance norm, legacy
  "merging" downsampling, patch 2, window 7); its variants differ only in depths, heads and
  feature size. The config includes the order in which the merging layers join their
  sub-grids (``merge_order``, see :mod:`brainsegfounder.patch_merging`): MONAI's own order
  changed in 1.5, so it is ours to fix.
* ``ResEncUNet``: nnU-Net's residual-encoder U-Net, from ``dynamic-network-architectures``
  (:mod:`brainsegfounder.resenc_unet`), the backbone of the 3D MAE of Wald et al.
* ``PCTNet``: MIS-FM's parallel convolution + Swin transformer network
  (:mod:`brainsegfounder.pct_net`), the backbone of Volume Fusion.

This module imports no torch: the networks themselves are built in their own modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Dict, Tuple

from .errors import UserError
from .labels import schema

# Names of the merge orders (defined in patch_merging, which imports torch: this module doesn't).
MERGE_ORDER_NAMES = ("monai0.9", "monai1.5")
# The order weights trained before MONAI 1.5 need: BrainSegFounder's releases, plain MONAI files.
PUBLISHED_MERGE_ORDER = "monai0.9"
# New models: the order that gives every voxel of a 2x2x2 block to the projection.
NEW_MODEL_MERGE_ORDER = "monai1.5"


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class ArchitectureConfig:
    """What every architecture's config offers: a name, channels, how to store and build it.

    Subclasses are frozen dataclasses whose first field is ``architecture`` (their NAME)."""

    NAME: ClassVar[str]
    # State-dict names: the final 1x1x1 convolution (a new task re-initialises it), the tensors
    # whose second axis is the input channels (inflated when the inputs change), the encoder's.
    output_layer: ClassVar[str]
    INPUT_KERNELS: ClassVar[Tuple[str, ...]]
    ENCODER_PREFIXES: ClassVar[Tuple[str, ...]]

    in_channels: int
    out_channels: int

    def _check_name(self) -> None:
        if self.architecture != self.NAME:
            raise UserError(f"a {self.NAME} config cannot name architecture {self.architecture!r}")

    @property
    def total_stride(self) -> int:
        """How many times the deepest stage is smaller than the input along each axis."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line for people (models list / inspect)."""
        raise NotImplementedError

    def build(self, use_checkpoint: bool = False, use_flash_attention: bool = False):
        raise NotImplementedError

    def check_roi(self, roi, what: str = "ROI") -> None:
        """A window must be divisible by the network's total stride (else its skips misalign) and at least
        twice it: at one voxel the deepest stage's instance norm fails in training and outputs zeros in use."""
        stride = self.total_stride
        if any(int(r) % stride or int(r) < 2 * stride for r in roi):
            raise UserError(
                f"{what} {'x'.join(str(int(r)) for r in roi)} does not fit {self.NAME}: each side must be a "
                f"multiple of its total stride {stride}, at least {2 * stride}; choose e.g. "
                f"{max(2, 128 // stride) * stride}"
            )

    def to_dict(self) -> dict:
        return {k: _lists(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ArchitectureConfig":
        """The config a checkpoint's ``meta.network`` describes, of whichever architecture it
        names (SwinUNETR when it names none: files written before there was a choice)."""
        name = data.get("architecture", SwinUNETRConfig.NAME)
        target = ARCHITECTURES.get(name)
        if target is None:
            raise UserError(
                f"checkpoint architecture {name!r} is unknown to this brainsegfounder (it knows "
                f"{', '.join(ARCHITECTURES)}); upgrade brainsegfounder or choose another model"
            )
        unknown = set(data) - {f.name for f in fields(target)}
        if unknown:
            raise UserError(
                f"unknown {name} settings {sorted(unknown)} in checkpoint metadata; "
                "the checkpoint was written by a newer version: upgrade brainsegfounder"
            )
        return target(**{k: _tuples(v) for k, v in data.items()})


@dataclass(frozen=True)
class SwinUNETRConfig(ArchitectureConfig):
    NAME: ClassVar[str] = "SwinUNETR"
    output_layer: ClassVar[str] = "out.conv.conv"
    # The patch embedding and the first residual block on the raw image (3x3x3 conv, 1x1x1 shortcut).
    INPUT_KERNELS: ClassVar[Tuple[str, ...]] = (
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
    )
    ENCODER_PREFIXES: ClassVar[Tuple[str, ...]] = ("swinViT.",)

    in_channels: int
    out_channels: int
    depths: Tuple[int, ...] = (2, 2, 2, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    feature_size: int = 48
    # Fixed by the BrainSegFounder weights; stored so a checkpoint is fully self-describing.
    architecture: str = "SwinUNETR"
    use_v2: bool = False
    norm_name: str = "instance"
    downsample: str = "merging"
    patch_size: int = 2
    window_size: int = 7
    # The order each merging layer joins its 2x2x2 sub-grids in: "monai0.9" for weights trained
    # with MONAI 0.9-1.4 (BrainSegFounder's), "monai1.5" for new models. Checkpoints of ours
    # without the field predate it and were trained with MONAI 1.6, i.e. "monai1.5".
    merge_order: str = NEW_MODEL_MERGE_ORDER

    def __post_init__(self):
        self._check_name()
        if self.merge_order not in MERGE_ORDER_NAMES:
            raise UserError(
                f"unknown merge order {self.merge_order!r} in the network settings; "
                f"choose one of {', '.join(MERGE_ORDER_NAMES)}"
            )

    @property
    def total_stride(self) -> int:
        return self.patch_size * 16  # the patch embedding, then four merging layers

    def summary(self) -> str:
        return (
            f"SwinUNETR feature size {self.feature_size}, depths {','.join(map(str, self.depths))}, "
            f"heads {','.join(map(str, self.num_heads))}, merge order {self.merge_order}"
        )

    def build(self, use_checkpoint: bool = False, use_flash_attention: bool = False):
        """MONAI's SwinUNETR (weights random), its merging layers in the config's merge order
        (whatever MONAI's own order is)."""
        from monai.networks.nets import SwinUNETR

        from .patch_merging import set_merge_order

        net = SwinUNETR(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            patch_size=self.patch_size,
            depths=self.depths,
            num_heads=self.num_heads,
            window_size=self.window_size,
            feature_size=self.feature_size,
            norm_name=self.norm_name,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
            downsample=self.downsample,
            use_v2=self.use_v2,
            use_flash_attention=use_flash_attention,
        )
        if self.downsample == "merging":
            set_merge_order(net.swinViT, self.merge_order)
        return net


# The name every caller used while SwinUNETR was the only architecture.
NetworkConfig = SwinUNETRConfig


@dataclass(frozen=True)
class ResEncUNetConfig(ArchitectureConfig):
    """nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``): 3x3x3 convolutions, instance
    norm (affine), leaky ReLU, one convolution per decoder stage; the first stage keeps the
    input's resolution, every later one halves it."""

    NAME: ClassVar[str] = "ResEncUNet"
    INPUT_KERNELS: ClassVar[Tuple[str, ...]] = ("encoder.stem.convs.0.conv.weight",)
    ENCODER_PREFIXES: ClassVar[Tuple[str, ...]] = ("encoder.",)

    in_channels: int
    out_channels: int
    features_per_stage: Tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    blocks_per_stage: Tuple[int, ...] = (1, 3, 4, 6, 6, 6)
    architecture: str = "ResEncUNet"

    def __post_init__(self):
        self._check_name()
        if len(self.features_per_stage) != len(self.blocks_per_stage) or len(self.blocks_per_stage) < 2:
            raise UserError("a ResEncUNet needs as many features_per_stage as blocks_per_stage, at least 2 stages")

    @property
    def output_layer(self) -> str:  # the last of the decoder's segmentation layers (one per decoder stage)
        return f"decoder.seg_layers.{len(self.blocks_per_stage) - 2}"

    @property
    def total_stride(self) -> int:
        return 2 ** (len(self.blocks_per_stage) - 1)

    def summary(self) -> str:
        return (
            f"ResEncUNet {len(self.blocks_per_stage)} stages, features "
            f"{','.join(map(str, self.features_per_stage))}, blocks {','.join(map(str, self.blocks_per_stage))}"
        )

    def build(self, use_checkpoint: bool = False, use_flash_attention: bool = False):
        from .resenc_unet import build_resenc_unet

        return build_resenc_unet(self)


@dataclass(frozen=True)
class PCTNetConfig(ArchitectureConfig):
    """MIS-FM's PCT-Net: convolutions at full and half resolution, a convolutional patch
    embedding to 1/4, three stages of parallel convolution + Swin blocks (1/4, 1/8, 1/16), a
    U-shaped decoder that upsamples and concatenates (BatchNorm + PReLU)."""

    NAME: ClassVar[str] = "PCTNet"
    output_layer: ClassVar[str] = "head"
    INPUT_KERNELS: ClassVar[Tuple[str, ...]] = ("stem.0.block.0.weight",)
    ENCODER_PREFIXES: ClassVar[Tuple[str, ...]] = ("stem.", "stages.")

    in_channels: int
    out_channels: int
    features: Tuple[int, ...] = (32, 64, 128, 256, 512)  # full, 1/2, then the three stages
    depths: Tuple[int, ...] = (2, 2, 2)  # Swin blocks per stage
    num_heads: Tuple[int, ...] = (4, 8, 16)
    window_size: int = 6
    mlp_ratio: float = 4.0
    drop_path: float = 0.2  # stochastic depth, rising linearly over the Swin blocks to this
    architecture: str = "PCTNet"

    def __post_init__(self):
        self._check_name()
        if len(self.features) != 5 or len(self.depths) != 3 or len(self.num_heads) != 3:
            raise UserError("a PCTNet has 5 feature sizes (2 convolutional levels, 3 stages), 3 depths and 3 heads")
        if any(f % h for f, h in zip(self.features[2:], self.num_heads, strict=True)):
            raise UserError(f"PCTNet stage features {self.features[2:]} must divide by their heads {self.num_heads}")

    @property
    def total_stride(self) -> int:
        return 16

    def summary(self) -> str:
        return (
            f"PCTNet features {','.join(map(str, self.features))}, Swin depths {','.join(map(str, self.depths))}, "
            f"heads {','.join(map(str, self.num_heads))}, window {self.window_size}"
        )

    def build(self, use_checkpoint: bool = False, use_flash_attention: bool = False):
        from .pct_net import PCTNet

        return PCTNet(self, use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention)


ARCHITECTURES: Dict[str, type] = {c.NAME: c for c in (SwinUNETRConfig, ResEncUNetConfig, PCTNetConfig)}
# What people type (recipes, --architecture): short names, any case.
ARCHITECTURE_ALIASES = {
    **{alias: "SwinUNETR" for alias in ("swinunetr", "swin")},
    **{alias: "ResEncUNet" for alias in ("resencunet", "resenc")},
    **{alias: "PCTNet" for alias in ("pctnet", "pct-net", "pct")},
}


def architecture_name(text: str) -> str:
    """The architecture ``text`` names (``resenc``, ``PCT-Net``, ...), or a one-line error."""
    name = ARCHITECTURE_ALIASES.get(str(text).lower())
    if name is None:
        raise UserError(f"unknown architecture {text!r}; choose swinunetr, resenc or pctnet")
    return name


# BrainSegFounder's sizes (parameter counts for 4 inputs and 3 outputs) and tiny test sizes.
SIZES: Dict[str, dict] = {
    "62M": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "64M": dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "70M": dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "277M": dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), feature_size=96),
    "small": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=24),
    "tiny": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=12),
}
# nnU-Net's ResEnc presets M and L (and XL) are one network: 32..320 features, blocks 1,3,4,6,6,6
# at 6 stages. They differ in the GPU memory their planner fills (8 vs 24 GB), i.e. in the
# training crop and batch: L is Wald et al.'s 3D MAE backbone at 160^3 crops (give that ROI).
RESENC_SIZES: Dict[str, dict] = {
    "L": dict(features_per_stage=(32, 64, 128, 256, 320, 320), blocks_per_stage=(1, 3, 4, 6, 6, 6)),
    "M": dict(features_per_stage=(32, 64, 128, 256, 320, 320), blocks_per_stage=(1, 3, 4, 6, 6, 6)),
    "tiny": dict(features_per_stage=(8, 16, 32, 64, 64, 64), blocks_per_stage=(1, 1, 1, 1, 1, 1)),
}
PCTNET_SIZES: Dict[str, dict] = {
    "45M": {},  # MIS-FM's (features 32..512, depths 2,2,2, heads 4,8,16, window 6)
    "tiny": dict(features=(8, 16, 24, 48, 96), num_heads=(2, 4, 8), window_size=4),
}
ARCHITECTURE_SIZES: Dict[str, Dict[str, dict]] = {
    "SwinUNETR": SIZES,
    "ResEncUNet": RESENC_SIZES,
    "PCTNet": PCTNET_SIZES,
}


@dataclass(frozen=True)
class TaskPreset:
    """What a task needs: its inputs in channel order and its label schema."""

    name: str
    modalities: Tuple[str, ...]
    label_schema: str
    description: str = ""
    roi_size: Tuple[int, int, int] = (128, 128, 128)
    # Index-axis orientation of the training images (ITK/DICOM letters): BraTS files are LPS,
    # ATLAS files (MNI152NLin2009aSym, as nibabel writes them) are RAS.
    orientation: str = "LPS"
    # Voxel size of the training images (mm): BraTS and ATLAS (MNI152) are 1 mm.
    spacing_mm: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    # How the training images were preprocessed: BraTS's are skull-stripped and co-registered;
    # ATLAS's T1 keeps the skull (defaced only).
    skull_stripped: bool = True
    coregistered: bool = True


PRESETS: Dict[str, TaskPreset] = {
    # Channel order [FLAIR, T1ce, T1, T2] is the one BrainSegFounder's released weights need.
    "brats": TaskPreset(
        "brats",
        ("flair", "t1ce", "t1", "t2"),
        "brats_regions",
        "glioma: 4 MRI contrasts -> tumour core, whole tumour, enhancing tumour",
    ),
    "atlas": TaskPreset(
        "atlas",
        ("t1",),
        "lesion",
        "stroke: T1 -> lesion",
        roi_size=(96, 96, 96),
        orientation="RAS",
        skull_stripped=False,
    ),
}


def sized_config(architecture: str, size: str, in_channels: int, out_channels: int, **settings):
    """The config of a named size of an architecture, e.g. ``sized_config("ResEncUNet", "L", 4, 3)``."""
    sizes = ARCHITECTURE_SIZES[architecture]
    if size not in sizes:
        raise UserError(f"unknown model size {size!r} for {architecture}; choose one of {', '.join(sizes)}")
    return ARCHITECTURES[architecture](in_channels=in_channels, out_channels=out_channels, **sizes[size], **settings)


def network_config(size: str, preset: str, architecture: str = SwinUNETRConfig.NAME):
    """The network for a named size and task preset, e.g. ``network_config("62M", "brats")``."""
    task = task_preset(preset)
    return sized_config(architecture, size, len(task.modalities), schema(task.label_schema).num_channels)


def task_preset(name: str) -> TaskPreset:
    if name not in PRESETS:
        raise UserError(f"unknown task preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_network(config: ArchitectureConfig, use_checkpoint: bool = False, use_flash_attention: bool = False):
    """Instantiate the network ``config`` describes (weights random). ``use_checkpoint``:
    gradient checkpointing where the architecture has it; ``use_flash_attention``: scaled
    dot-product attention in its Swin blocks, if any."""
    return config.build(use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def output_bias(model, config: ArchitectureConfig):
    """The bias of the network's final convolution (fine-tuning sets a foreground prior in it)."""
    return model.get_parameter(f"{config.output_layer}.bias")


def network_from_settings(settings: dict):
    """The network (weights random) of a config written as plain data (``to_dict``): what an
    exported MONAI bundle's ``network_def`` calls for architectures MONAI cannot build itself."""
    return ArchitectureConfig.from_dict(settings).build()
