"""What the model is and how its weights start: from scratch, an SSL encoder, or a full model.

When the pretrained input channels differ from the task's (a 1- or 2-channel stage-1 encoder
for the 4 BraTS contrasts), the input kernels are *inflated*, not thrown away: a new channel
whose modality the source also had gets that channel's kernel, any other gets the mean kernel
over the source channels, and all are scaled by ``C_source / C_new`` so that the summed
response to equal inputs keeps its magnitude. A different number of outputs re-initialises
only the output layer. Every other mismatch (depths, heads, feature size) is an error naming
the keys. What was loaded, inflated and re-initialised is returned and written to the run.

Every architecture (SwinUNETR, ResEncUNet, PCTNet: ``model.architecture``) is trained the same
way; its config names its input kernels, encoder and output layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from brainsegfounder.checkpoints import LoadedCheckpoint, ModelMeta, load_checkpoint, load_strict
from brainsegfounder.errors import UserError
from brainsegfounder.labels import MULTILABEL_PREFIX, schema
from brainsegfounder.modalities import canonical
from brainsegfounder.networks import (
    ARCHITECTURE_SIZES,
    PRESETS,
    ArchitectureConfig,
    architecture_name,
    build_network,
    output_bias,
    sized_config,
)
from brainsegfounder.registry import resolve_model

from ..harness.initial_weights import InitReport, inflate, pretext_kind, same_tensors


@dataclass
class TaskSpec:
    """The model a run trains: inputs, outputs, geometry and network."""

    task: str
    modalities: Tuple[str, ...]
    label_schema: str
    orientation: str
    network: ArchitectureConfig
    roi: Tuple[int, int, int]
    base: Optional[LoadedCheckpoint] = None
    base_meta: Optional[ModelMeta] = None

    def meta(
        self,
        name: str,
        version: str,
        provenance: Dict[str, str],
        description: str = "",
        trained_on: str = "real",
        spacing_mm: Optional[Tuple[float, float, float]] = None,
    ) -> ModelMeta:
        return ModelMeta(
            network=self.network,
            modalities=self.modalities,
            label_schema=self.label_schema,
            name=name,
            version=version,
            task=self.task,
            roi_size=self.roi,
            orientation=self.orientation,
            provenance=provenance,
            description=description,
            trained_on=trained_on,
            spacing_mm=spacing_mm,
        )


def resolve_task(recipe: dict) -> TaskSpec:
    """Inputs, outputs and network of the run from the recipe (and its base model)."""
    base = None
    if recipe["init"]["checkpoint"]:
        base = pretext_kind(load_checkpoint(resolve_model(str(recipe["init"]["checkpoint"]))))
    task = recipe["task"]
    base_meta = base.meta if base is not None else None
    if task == "from_base":
        if base_meta is None:
            raise UserError(
                f"base model {base.path.name} has no metadata; use a task recipe (brats, atlas, generic) "
                "instead of from_base"
            )
        modalities, label_schema, orientation = base_meta.modalities, base_meta.label_schema, base_meta.orientation
        task = base_meta.task
    elif task == "generic":
        modalities = tuple(canonical(m) or str(m).lower() for m in recipe["modalities"])
        label_schema = MULTILABEL_PREFIX + ",".join(str(n) for n in recipe["labels"])
        orientation = recipe["orientation"]
    elif task in PRESETS:
        preset = PRESETS[task]
        modalities, label_schema, orientation = preset.modalities, preset.label_schema, preset.orientation
    else:
        raise UserError(f"unknown task {task!r}; choose {', '.join(PRESETS)}, generic or from_base")
    out_channels = schema(label_schema).num_channels
    if (
        base_meta is not None
        and recipe["task"] != "from_base"
        and not recipe["init"]["encoder_only"]
        and base.kind == "brainsegfounder"
        and base_meta.label_schema == label_schema
        and tuple(base_meta.modalities) != tuple(modalities)
    ):
        raise UserError(
            f"base model {base_meta.name} takes {', '.join(base_meta.modalities)} but the recipe's "
            f"task needs {', '.join(modalities)}; choose a base model for these inputs"
        )
    network = _network(recipe, base, len(modalities), out_channels)
    roi_setting = recipe["model"]["roi"]
    if roi_setting == "auto":
        roi_setting = base_meta.roi_size if base_meta is not None else (128, 128, 128)
    roi = tuple(int(r) for r in roi_setting)
    network.check_roi(roi, "recipe model.roi")
    return TaskSpec(task, tuple(modalities), label_schema, orientation, network, roi, base, base_meta)


def _network(recipe: dict, base: Optional[LoadedCheckpoint], in_channels: int, out_channels: int):
    """The recipe's architecture and size (``auto``: the base model's), checked against the base."""
    size, architecture = recipe["model"]["size"], recipe["model"]["architecture"]
    if architecture == "auto":
        architecture = base.network.NAME if base is not None else "SwinUNETR"
    architecture = architecture_name(architecture)
    if base is not None and architecture != base.network.NAME:
        raise UserError(
            f"the init checkpoint is a {base.network.NAME} but the recipe's model.architecture is {architecture}; "
            "set model.architecture=auto or give a base model of that architecture"
        )
    if size == "auto":
        if base is None:
            raise UserError("model.size auto needs an init checkpoint to take the architecture from")
        return replace(base.network, in_channels=in_channels, out_channels=out_channels)
    if size not in ARCHITECTURE_SIZES[architecture]:
        raise UserError(
            f"unknown model.size {size!r} for {architecture}; choose {', '.join(ARCHITECTURE_SIZES[architecture])} "
            "or auto"
        )
    # A SwinUNETR keeps the merge order its initial weights were trained with (BrainSegFounder's
    # releases: MONAI 0.9's); one from scratch gets the order of new models.
    order = {"merge_order": base.network.merge_order} if base is not None and architecture == "SwinUNETR" else {}
    network = sized_config(architecture, size, in_channels, out_channels, **order)
    if base is not None:
        mine, theirs = _shape(network), _shape(base.network)
        if mine != theirs:
            raise UserError(
                f"the init checkpoint is {base.network.summary()}, but model.size {size} is "
                f"{network.summary()}; set model.size=auto or the matching size"
            )
    return network


def _shape(config: ArchitectureConfig) -> dict:
    """A config without what may differ from its base model's: the channels in and out."""
    return {k: v for k, v in config.to_dict().items() if k not in ("in_channels", "out_channels")}


def initialise(model, spec: TaskSpec, recipe: dict) -> InitReport:
    """Load the recipe's init checkpoint into ``model`` (the network built from ``spec``)."""
    report = InitReport()
    base = spec.base
    if base is None:
        return report
    report.source, report.kind = str(base.path), base.kind
    source_modalities = base.meta.modalities if base.meta is not None else recipe["init"]["modalities"]
    target = model.state_dict()
    encoder_only = base.is_encoder_only or recipe["init"]["encoder_only"]
    encoder = spec.network.ENCODER_PREFIXES
    wanted = {k: v for k, v in base.state_dict.items() if not encoder_only or k.startswith(encoder)}
    report.ignored = sorted(set(base.state_dict) - set(wanted))
    state = dict(target)  # anything not in the checkpoint keeps its fresh initialisation
    input_kernels = same_tensors(target, spec.network.INPUT_KERNELS)
    for key, value in wanted.items():
        if key not in target:
            continue  # reported by load_strict below through the strict comparison
        if key in input_kernels and value.shape[1] != target[key].shape[1] and value.shape[2:] == target[key].shape[2:]:
            state[key], report.inflated[key] = inflate(value.float(), source_modalities, spec.modalities)
        elif key.startswith(spec.network.output_layer + ".") and value.shape != target[key].shape:
            report.reinitialised.append(key)
            continue
        else:
            state[key] = value
        report.loaded.append(key)
    unexpected = sorted(set(wanted) - set(target))
    if unexpected:
        raise UserError(
            f"{base.path.name} has {len(unexpected)} tensors this network lacks "
            f"({', '.join(unexpected[:3])}); it is a different architecture"
        )
    if encoder_only:
        missing = sorted(k for k in target if k.startswith(encoder) and k not in wanted)
    else:
        missing = sorted(k for k in target if k not in wanted)
    if missing:
        raise UserError(
            f"{base.path.name} lacks {len(missing)} tensors of this network "
            f"({', '.join(missing[:3])}); it is a different architecture"
        )
    load_strict(model, state, f"initialisation from {base.path.name}")
    if encoder_only:  # the decoder starts fresh: say which tensors (those sharing a loaded one's storage are loaded)
        loaded = same_tensors(target, report.loaded)
        report.reinitialised = [k for k in target if k not in loaded]
    report.loaded.sort()
    report.reinitialised.sort()
    return report


def build_model(spec: TaskSpec, recipe: dict):
    """The network with its initial weights, and what was loaded.

    A new output layer gets the bias of a small foreground prior (as in Lin et al.'s focal
    loss): with bias 0 every voxel starts at probability 0.5, and the first hundreds of steps
    go into learning that most of the brain is not tumour.
    """
    import torch

    model = build_network(spec.network, use_checkpoint=bool(recipe["model"]["gradient_checkpointing"]))
    report = initialise(model, spec, recipe)
    if report.kind in ("scratch", "ssl") or report.reinitialised or recipe["init"]["encoder_only"]:
        prior = float(recipe["init"]["output_prior"])
        with torch.no_grad():
            output_bias(model, spec.network).fill_(math.log(prior / (1 - prior)))
    return model, report
