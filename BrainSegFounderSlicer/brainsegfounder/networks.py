"""Model factory: MONAI SwinUNETR v1 in BrainSegFounder's configurations, and task presets.

BrainSegFounder is MONAI's SwinUNETR v1 (instance norm, legacy "merging" downsampling,
patch 2, window 7); its variants differ only in depths, heads and feature size. The
architecture is described by :class:`NetworkConfig`, which checkpoints store as metadata,
including the order in which the merging layers join their sub-grids (``merge_order``, see
:mod:`brainsegfounder.patch_merging`): MONAI's own order changed in 1.5, so it is ours to fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

from .errors import UserError
from .labels import schema

# Names of the merge orders (defined in patch_merging, which imports torch: this module doesn't).
MERGE_ORDER_NAMES = ("monai0.9", "monai1.5")
# The order weights trained before MONAI 1.5 need: BrainSegFounder's releases, plain MONAI files.
PUBLISHED_MERGE_ORDER = "monai0.9"
# New models: the order that gives every voxel of a 2x2x2 block to the projection.
NEW_MODEL_MERGE_ORDER = "monai1.5"


@dataclass(frozen=True)
class NetworkConfig:
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
        if self.merge_order not in MERGE_ORDER_NAMES:
            raise UserError(
                f"unknown merge order {self.merge_order!r} in the network settings; "
                f"choose one of {', '.join(MERGE_ORDER_NAMES)}"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["depths"] = list(self.depths)
        data["num_heads"] = list(self.num_heads)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise UserError(
                f"unknown network settings {sorted(unknown)} in checkpoint metadata; "
                "the checkpoint was written by a newer version: upgrade brainsegfounder"
            )
        values = dict(data)
        for key in ("depths", "num_heads"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        config = cls(**values)
        if config.architecture != "SwinUNETR":
            raise UserError(
                f"architecture {config.architecture!r} is not supported; only SwinUNETR checkpoints can be used"
            )
        return config


# BrainSegFounder's sizes (parameter counts for 4 inputs and 3 outputs) and tiny test sizes.
SIZES: Dict[str, dict] = {
    "62M": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "64M": dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "70M": dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), feature_size=48),
    "277M": dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), feature_size=96),
    "small": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=24),
    "tiny": dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=12),
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


PRESETS: Dict[str, TaskPreset] = {
    # Channel order [FLAIR, T1ce, T1, T2] is the one BrainSegFounder's released weights need.
    "brats": TaskPreset(
        "brats",
        ("flair", "t1ce", "t1", "t2"),
        "brats_regions",
        "glioma: 4 MRI contrasts -> tumour core, whole tumour, enhancing tumour",
    ),
    "atlas": TaskPreset("atlas", ("t1",), "lesion", "stroke: T1 -> lesion", roi_size=(96, 96, 96), orientation="RAS"),
}


def network_config(size: str, preset: str) -> NetworkConfig:
    """The network for a named size and task preset, e.g. ``network_config("62M", "brats")``."""
    if size not in SIZES:
        raise UserError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    task = task_preset(preset)
    return NetworkConfig(
        in_channels=len(task.modalities), out_channels=schema(task.label_schema).num_channels, **SIZES[size]
    )


def task_preset(name: str) -> TaskPreset:
    if name not in PRESETS:
        raise UserError(f"unknown task preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_network(config: NetworkConfig, use_checkpoint: bool = False, use_flash_attention: bool = False):
    """Instantiate the MONAI network for ``config`` (weights random), its merging layers in the
    config's merge order (whatever MONAI's own order is)."""
    from monai.networks.nets import SwinUNETR

    from .patch_merging import set_merge_order

    net = SwinUNETR(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        patch_size=config.patch_size,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        feature_size=config.feature_size,
        norm_name=config.norm_name,
        use_checkpoint=use_checkpoint,
        spatial_dims=3,
        downsample=config.downsample,
        use_v2=config.use_v2,
        use_flash_attention=use_flash_attention,
    )
    if config.downsample == "merging":
        set_merge_order(net.swinViT, config.merge_order)
    return net


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
