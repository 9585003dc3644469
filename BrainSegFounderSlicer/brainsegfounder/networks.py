"""Model factory: MONAI SwinUNETR v1 in BrainSegFounder's configurations, and task presets.

BrainSegFounder is MONAI's SwinUNETR v1 (instance norm, legacy "merging" downsampling,
patch 2, window 7); its variants differ only in depths, heads and feature size. The
architecture is described by :class:`NetworkConfig`, which checkpoints store as metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

from .errors import UserError
from .labels import schema


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
    """Instantiate the MONAI network for ``config`` (weights random)."""
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
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


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
