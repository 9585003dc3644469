"""Checkpoints: our self-describing format, BrainSegFounder's released formats, plain MONAI.

Every file is read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python
objects unpickled (e.g. a whole saved model) is refused, never executed. Loading is strict:
a key or shape mismatch is an error that names the keys.

Formats recognised:

* ours: ``{"format": "brainsegfounder", "format_version": 1, "state_dict", "meta"}``;
* BrainSegFounder fine-tuned: ``{"state_dict"}`` or ``{"epoch", "best_acc", "state_dict"}``
  with plain SwinUNETR keys;
* BrainSegFounder self-supervised: ``{"global_step", "epoch", "state_dict", "optimizer"}``
  with ``module.swinViT.*`` plus the SSL head keys (encoder only);
* a plain MONAI SwinUNETR state dict (optionally under "model" or "net").

Where no metadata exists the architecture is inferred from the keys.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from . import __version__
from .atomic import atomic_path
from .errors import UserError
from .labels import schema
from .networks import (
    PRESETS,
    PUBLISHED_MERGE_ORDER,
    ArchitectureConfig,
    SwinUNETRConfig,
    build_network,
    network_config,
)
from .output_files import OutputFiles
from .paths import check_path

if TYPE_CHECKING:  # torch is imported where tensors are made, keeping this module cheap to import
    import torch

FORMAT = "brainsegfounder"
FORMAT_VERSION = 1
ENCODER_PREFIX = "swinViT."
SSL_HEAD_PREFIXES = ("rotation_head.", "contrastive_head.", "conv.")
# Buffers the network rebuilds identically from its config (Swin's relative position indices:
# 8 x 0.9 MB of int64 even in the tiny model); compact files leave them out.
DERIVED_BUFFER_SUFFIX = "relative_position_index"


# What a model was trained on, and the note a run must show when that is not real scans.
TRAINED_ON = {
    "real": None,
    "synthetic": "model {name} was trained on synthetic data only (a demo): its result on a real scan is not "
    "a clinical segmentation",
    "untrained": "model {name} is untrained (random weights): its result is meaningless",
}


@dataclass
class ModelMeta:
    """What a checkpoint says about itself (the ``meta`` block of our format)."""

    network: ArchitectureConfig  # SwinUNETR, ResEncUNet or PCTNet (networks.ARCHITECTURES)
    modalities: Tuple[str, ...]
    label_schema: str
    name: str = "unnamed"
    version: str = "0"
    task: str = ""
    normalization: str = "zscore_nonzero"
    roi_size: Tuple[int, int, int] = (128, 128, 128)
    orientation: str = "LPS"
    provenance: Dict[str, str] = field(default_factory=dict)
    description: str = ""
    trained_on: str = ""  # see TRAINED_ON; "" in files written before it was recorded
    # Voxel size (mm, along the network's index axes i, j, k) the model was trained at: inputs are
    # resampled to it for inference. None: not recorded (files written before it was), run at
    # the input's own voxel size.
    spacing_mm: Optional[Tuple[float, float, float]] = None
    # The fast mode measured for this model (see fast_mode.py): its settings and what it cost
    # against the default on the cases it was measured on. None: no fast mode is offered.
    fast: Optional[Dict] = None
    # Whether the training inputs were skull-stripped / co-registered (segment preprocesses to
    # match). None: not recorded (files written before it was): the task preset's.
    skull_stripped: Optional[bool] = None
    coregistered: Optional[bool] = None

    def expects(self) -> Tuple[bool, bool]:
        """(skull-stripped, co-registered) inputs: as recorded, else as the task preset's, else neither."""
        preset = PRESETS.get(self.task)
        stripped = self.skull_stripped if self.skull_stripped is not None else bool(preset and preset.skull_stripped)
        coregistered = self.coregistered if self.coregistered is not None else bool(preset and preset.coregistered)
        return stripped, coregistered

    def caution(self) -> Optional[str]:
        """A note every run of a model not made for real scans must show, or None."""
        note = TRAINED_ON.get(self.trained_on)
        return note.format(name=self.name) if note else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "network": self.network.to_dict(),
            "modalities": list(self.modalities),
            "label_schema": self.label_schema,
            "normalization": self.normalization,
            "roi_size": list(self.roi_size),
            "orientation": self.orientation,
            "provenance": dict(self.provenance),
            "description": self.description,
            "trained_on": self.trained_on,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "fast": self.fast,
            "skull_stripped": self.skull_stripped,
            "coregistered": self.coregistered,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMeta":
        try:
            return cls(
                network=ArchitectureConfig.from_dict(data["network"]),
                modalities=tuple(data["modalities"]),
                label_schema=data["label_schema"],
                name=data.get("name", "unnamed"),
                version=str(data.get("version", "0")),
                task=data.get("task", ""),
                normalization=data.get("normalization", "zscore_nonzero"),
                roi_size=tuple(int(v) for v in data.get("roi_size", (128, 128, 128))),
                orientation=data.get("orientation", "LPS"),
                provenance=dict(data.get("provenance", {})),
                description=data.get("description", ""),
                trained_on=data.get("trained_on", ""),
                spacing_mm=tuple(float(v) for v in data["spacing_mm"]) if data.get("spacing_mm") else None,
                fast=data.get("fast"),
                skull_stripped=data.get("skull_stripped"),
                coregistered=data.get("coregistered"),
            )
        except (KeyError, TypeError) as error:
            raise UserError(
                f"checkpoint metadata is incomplete (missing {error}); re-save the model with brainsegfounder"
            ) from None

    @classmethod
    def for_preset(cls, preset: str, network: ArchitectureConfig, **kwargs) -> "ModelMeta":
        task = PRESETS[preset]
        return cls(
            network=network,
            modalities=task.modalities,
            label_schema=task.label_schema,
            task=preset,
            roi_size=task.roi_size,
            orientation=task.orientation,
            **{
                "spacing_mm": task.spacing_mm,
                "skull_stripped": task.skull_stripped,
                "coregistered": task.coregistered,
                **kwargs,
            },
        )


@dataclass
class LoadedCheckpoint:
    """A read checkpoint: its weights, metadata (given or inferred) and what kind it is."""

    path: Path
    kind: str  # "brainsegfounder", "finetuned", "ssl", "monai"
    state_dict: Dict[str, "torch.Tensor"]
    meta: Optional[ModelMeta]
    network: ArchitectureConfig

    @property
    def is_encoder_only(self) -> bool:
        return self.kind == "ssl"

    @property
    def is_pretext(self) -> bool:
        """Trained on a pretext task (BrainSegFounder's SSL, Volume Fusion, MAE): its outputs are no
        segmentation even where the network has a full decoder, so it is fine-tuned, never segmented with."""
        return self.is_encoder_only or (self.meta is not None and self.meta.task == "ssl")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
# The older format is a pickle stream whose first object is this number; its pickle protocol is
# whatever the saver chose (2 by default, 3-5 put other bytes first), so it is decoded, not matched.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_NOT_A_CHECKPOINT = "give a .pt/.pth file saved by torch.save, or a model name"


# torch's safe (weights_only) unpickler reads protocols 2 and 3 only ("Unsupported operand" else).
LEGACY_PROTOCOLS = (2, 3)


def _legacy_protocol(head: bytes) -> Optional[int]:
    """The pickle protocol of a file in torch's legacy format (a pickle whose first object is
    torch's magic number), or None for any other file."""
    protocol = 0  # protocols 0 and 1 have no PROTO opcode
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name == "PROTO":
                protocol = arg
            elif opcode.name != "FRAME":
                return protocol if opcode.name.startswith("LONG") and arg == LEGACY_MAGIC_NUMBER else None
    except Exception:  # pickletools fails on random bytes in many ways
        return None
    return None


def _check_container(path: Path, size: int) -> None:
    """Refuse, from its first bytes and zip directory, a file torch would take long or much
    memory to refuse: random bytes, or a zip whose members inflate far beyond the file (torch
    stores its members uncompressed)."""
    with path.open("rb") as f:
        head = f.read(64)
    protocol = _legacy_protocol(head)
    if protocol in LEGACY_PROTOCOLS:
        return
    if protocol is not None:
        raise UserError(
            f"checkpoint {path} is in PyTorch's old format with pickle protocol {protocol}, which the safe loader "
            "cannot read; where you trust it, load it and save it again with torch.save"
        )
    if head.startswith(b"\x80"):  # pickle protocol 2+: pickle.dump's, not torch.save's
        raise UserError(f"checkpoint {path} is a Python pickle, not a PyTorch checkpoint; {_NOT_A_CHECKPOINT}")
    if not head.startswith(ZIP_MAGIC):
        raise UserError(
            f"checkpoint {path} is not a PyTorch checkpoint (it starts with neither a zip nor torch's pickle "
            f"header); {_NOT_A_CHECKPOINT}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserError(
            f"checkpoint {path} is truncated or damaged (its zip directory cannot be read); download or copy it again"
        ) from None
    inflated = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or inflated > size:
        raise UserError(
            f"checkpoint {path} is not a PyTorch checkpoint (its {size} bytes would inflate to {inflated}); "
            f"{_NOT_A_CHECKPOINT}"
        )
    if not any(m.filename.endswith("data.pkl") for m in members):
        raise UserError(
            f"checkpoint {path} is a zip file but not a PyTorch checkpoint (no data.pkl); {_NOT_A_CHECKPOINT}"
        )


def check_checkpoint_file(path: os.PathLike) -> int:
    """What can be known of a checkpoint without torch: the path, and the container (returns the
    size). A file that is not a checkpoint is refused here, before torch is imported."""
    path = Path(path)
    size = check_path(path, "checkpoint", kind="file", hint=_NOT_A_CHECKPOINT).st_size
    _check_container(path, size)
    return size


def read_checkpoint_file(path: os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True`` and one clear error per failure mode; a file
    that is not a checkpoint is refused from its header, before torch reads it."""
    path = Path(path)
    check_checkpoint_file(path)
    import torch

    try:
        with warnings.catch_warnings():  # protocol 3 (read fine) warns that it is not torch's default
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "Unsupported class" in str(error):
            raise UserError(
                f"refused to load {path}: it holds pickled Python objects (e.g. a whole saved "
                "model), which could run arbitrary code; save its state_dict() instead"
            ) from None
        raise UserError(
            f"cannot read checkpoint {path}: it is damaged or not a PyTorch checkpoint; {_NOT_A_CHECKPOINT}"
        ) from None
    except Exception as error:  # torch's reader fails on damaged files in many ways (IndexError, EOFError, ...)
        raise UserError(
            f"cannot read checkpoint {path}: the file is truncated or not a PyTorch "
            f"checkpoint ({type(error).__name__}); download or copy it again"
        ) from None


def _tensor_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_module_prefix(state: Dict[str, "torch.Tensor"]) -> Dict[str, "torch.Tensor"]:
    if all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def infer_network(state: Dict[str, "torch.Tensor"], merge_order: Optional[str] = None) -> SwinUNETRConfig:
    """Architecture from SwinUNETR keys: depths from block indices, heads from the relative
    position tables, feature size / in-channels / patch from the patch embedding, out-channels
    from the output conv (encoder-only files get out_channels=0). The merge order cannot be
    seen in the weights: files without metadata (BrainSegFounder's releases, plain MONAI state
    dicts) were trained before MONAI 1.5 changed it, so they get the old order unless told."""
    try:
        embed = state[ENCODER_PREFIX + "patch_embed.proj.weight"]
    except KeyError:
        raise UserError(
            "the checkpoint has no 'swinViT.patch_embed.proj.weight': it is not a SwinUNETR / BrainSegFounder model"
        ) from None
    if embed.ndim != 5:
        raise UserError("the checkpoint's patch embedding is not 3D: it is not a 3D SwinUNETR model")
    feature_size, in_channels, patch = int(embed.shape[0]), int(embed.shape[1]), int(embed.shape[2])
    depths, heads, window = [], [], None
    for stage in range(1, 5):
        pattern = re.compile(rf"^{re.escape(ENCODER_PREFIX)}layers{stage}\.0\.blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if not blocks:
            raise UserError(f"the checkpoint has no blocks for Swin stage {stage}: not a 4-stage SwinUNETR")
        depths.append(max(blocks) + 1)
        table = state[f"{ENCODER_PREFIX}layers{stage}.0.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
        side = round(table.shape[0] ** (1 / 3))
        window = (side + 1) // 2
    out = state.get("out.conv.conv.weight")
    return SwinUNETRConfig(
        in_channels=in_channels,
        out_channels=int(out.shape[0]) if out is not None else 0,
        depths=tuple(depths),
        num_heads=tuple(heads),
        feature_size=feature_size,
        patch_size=patch,
        window_size=int(window),
        use_v2=any(k.startswith(ENCODER_PREFIX + "layers1c.") for k in state),
        merge_order=merge_order or PUBLISHED_MERGE_ORDER,
    )


def load_checkpoint(path: os.PathLike, merge_order: Optional[str] = None) -> LoadedCheckpoint:
    """Read any supported checkpoint; the weights are not yet put in a network.

    ``merge_order`` says which merge order a file without metadata was trained with (one
    trained with MONAI >= 1.5 needs "monai1.5"); a file of ours states its own."""
    path = Path(path)
    obj = read_checkpoint_file(path)
    meta = None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise UserError(
                f"{path} was written by a newer brainsegfounder (format "
                f"{obj['format_version']}); upgrade brainsegfounder"
            )
        meta = ModelMeta.from_dict(obj.get("meta", {}))
        state, kind = obj.get("state_dict"), "brainsegfounder"
        if obj.get("derived_buffers_omitted") and _tensor_dict(state):
            rebuilt = build_network(meta.network).state_dict()
            state = {**{k: v for k, v in rebuilt.items() if k.endswith(DERIVED_BUFFER_SUFFIX)}, **state}
    elif isinstance(obj, dict) and _tensor_dict(obj.get("state_dict")):
        state, kind = obj["state_dict"], "finetuned"
    elif isinstance(obj, dict) and (_tensor_dict(obj.get("model")) or _tensor_dict(obj.get("net"))):
        state, kind = obj.get("model") or obj.get("net"), "monai"
    elif _tensor_dict(obj):
        state, kind = obj, "monai"
    else:
        raise UserError(
            f"{path} holds no model weights (no state_dict of tensors); "
            "give a BrainSegFounder, MONAI SwinUNETR or brainsegfounder checkpoint"
        )
    if not _tensor_dict(state):
        raise UserError(f"{path} has an empty or invalid state_dict; the file is damaged")
    state = _strip_module_prefix(state)
    if any(k.startswith(SSL_HEAD_PREFIXES) for k in state) and not any(k.startswith("decoder1.") for k in state):
        kind = "ssl"
    if meta is not None and merge_order and merge_order != meta.network.merge_order:
        raise UserError(
            f"{path.name} states merge order {meta.network.merge_order} in its metadata; "
            "a merge order can only be given for checkpoints without metadata"
        )
    network = meta.network if meta is not None else infer_network(state, merge_order)
    return LoadedCheckpoint(path=path, kind=kind, state_dict=state, meta=meta, network=network)


def _mismatch_message(expected: Dict[str, "torch.Tensor"], given: Dict[str, "torch.Tensor"]) -> Optional[str]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))

    def names(keys: List[str]) -> str:
        head = ", ".join(keys[:3])
        return head + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} with other shapes (e.g. {k}: file {tuple(given[k].shape)}, "
            f"model {tuple(expected[k].shape)})"
        )
    return "; ".join(parts) or None


def load_strict(module, state: Dict[str, "torch.Tensor"], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the offending keys."""
    problem = _mismatch_message(module.state_dict(), state)
    if problem:
        raise UserError(f"{what} does not match the model: keys {problem}")
    module.load_state_dict(state, strict=True)


def network_from_checkpoint(ckpt: LoadedCheckpoint, **build_kwargs):
    """The checkpoint's network (of its architecture) with all its weights, loaded strictly. Pretext-task
    checkpoints are refused here: they have no segmentation decoder, or one that predicts their pretext task."""
    if ckpt.is_pretext:
        raise UserError(
            f"{ckpt.path} is a self-supervised (pretext-task) checkpoint without a segmentation "
            "decoder; fine-tune it first (brainsegfounder finetune --base) and segment with the result"
        )
    if ckpt.network.out_channels < 1:
        raise UserError(f"{ckpt.path} has no output layer ('{ckpt.network.output_layer}.weight'); it cannot segment")
    model = build_network(ckpt.network, **build_kwargs)
    load_strict(model, ckpt.state_dict, f"checkpoint {ckpt.path.name}")
    return model


def resolve_meta(ckpt: LoadedCheckpoint, task: Optional[str] = None) -> ModelMeta:
    """Metadata for any checkpoint: its own, or the task preset that fits its channels."""
    if ckpt.meta is not None:
        if task and ckpt.meta.task and task != ckpt.meta.task:
            raise UserError(
                f"model {ckpt.meta.name} is for task {ckpt.meta.task!r}, not {task!r}; "
                "drop --task or choose another model"
            )
        return ckpt.meta
    if task and task not in PRESETS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(PRESETS)}")
    net = ckpt.network
    candidates = (
        [task]
        if task
        else [
            name
            for name, p in PRESETS.items()
            if len(p.modalities) == net.in_channels and schema(p.label_schema).num_channels == net.out_channels
        ]
    )
    if len(candidates) != 1:
        raise UserError(
            f"{ckpt.path.name} has {net.in_channels} input and {net.out_channels} output channels "
            f"and no metadata; say which task it is with --task ({'/'.join(PRESETS)})"
        )
    preset = PRESETS[candidates[0]]
    if len(preset.modalities) != net.in_channels or schema(preset.label_schema).num_channels != net.out_channels:
        raise UserError(
            f"{ckpt.path.name} has {net.in_channels} inputs / {net.out_channels} outputs, but task "
            f"{preset.name!r} needs {len(preset.modalities)} / {schema(preset.label_schema).num_channels}"
        )
    return ModelMeta.for_preset(
        preset.name,
        net,
        name=ckpt.path.stem,
        version=ckpt.kind,
        provenance={"source": f"{ckpt.kind} checkpoint {ckpt.path.name}"},
        trained_on="real",  # BrainSegFounder's and MONAI's released weights come from real scans
    )


def checkpoint_payload(model, meta: ModelMeta, dtype: Optional["torch.dtype"] = None) -> dict:
    """Our self-describing checkpoint of ``model`` as saved (see :func:`state_payload`)."""
    return state_payload(model.state_dict(), meta, dtype)


def state_payload(state: Dict[str, "torch.Tensor"], meta: ModelMeta, dtype: Optional["torch.dtype"] = None) -> dict:
    """Our self-describing checkpoint of a state dict as saved. ``dtype`` (e.g. float16) makes a
    compact file: floating-point weights in that type (loading copies them back into the float32
    network) and no derived buffers (the loader rebuilds them from the config)."""
    provenance = dict(meta.provenance)
    provenance.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    provenance.setdefault("brainsegfounder", __version__)
    meta = replace(meta, provenance=provenance)  # a copy: the caller's meta stays as it was
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta.to_dict(), "state_dict": state}
    if dtype is not None:
        # One converted copy per tensor: ResEncUNet names each layer twice (and its decoder holds
        # the encoder), so converting per key would store its weights three times.
        converted: Dict[tuple, "torch.Tensor"] = {}

        def compact(v):
            view = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            if view not in converted:
                converted[view] = v.to(dtype)
            return converted[view]

        payload["state_dict"] = {
            k: compact(v) if v.is_floating_point() else v
            for k, v in state.items()
            if not k.endswith(DERIVED_BUFFER_SUFFIX)
        }
        payload["derived_buffers_omitted"] = True
    return payload


def save_checkpoint(path: os.PathLike, model, meta: ModelMeta, dtype: Optional["torch.dtype"] = None) -> Path:
    """Write :func:`checkpoint_payload` atomically (training runs: they own their folders)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint_payload(model, meta, dtype), tmp)
    return path


def init_model(
    output,
    size: str,
    task: str,
    seed: int = 0,
    name: Optional[str] = None,
    roi=None,
    overwrite: bool = False,
    architecture: str = SwinUNETRConfig.NAME,
) -> Path:
    """A randomly initialised, self-describing checkpoint (deterministic by seed)."""
    import torch

    config = network_config(size, task, architecture)
    config.check_roi(roi or PRESETS[task].roi_size)
    name = name or Path(output).name.split(".")[0]
    files = OutputFiles({"--output": output}, overwrite=overwrite).check()
    torch.manual_seed(seed)
    model = build_network(config)
    meta = ModelMeta.for_preset(
        task,
        config,
        name=name,
        version="0-untrained",
        provenance={"base": "random initialisation", "seed": str(seed), "size": size},
        description="untrained: its output is not meaningful",
        trained_on="untrained",
        spacing_mm=None,  # set by the training that gives it weights
    )
    if roi:
        meta.roi_size = tuple(roi)
    with files.write() as tmp:
        torch.save(checkpoint_payload(model, meta), tmp["--output"])
    return Path(output)
