"""The network a pretraining run trains and the weights it starts from.

``model.architecture`` and ``model.size`` name the backbone (``auto``: the init checkpoint's);
the task adds its outputs. A run starts from scratch or from ``init.checkpoint``: stage 1 for
stage 2, another task's model, BrainSegFounder's SSL release or a fine-tuned model. Encoder
tensors (the architecture's ``ENCODER_PREFIXES``, stem included) always load and must all be
there; the rest of a checkpoint of the same task loads too (stage 2 continues stage 1's
decoder), any other starts fresh and is listed as re-initialised. Input kernels are inflated
by modality when the inputs change, and a reconstruction layer's rows per input channel are
mapped by modality (not scaled). BrainSegFounder's SSL head keeps its own loader
(:func:`head.load_into_head`), which its released files are checked against.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from brainsegfounder.checkpoints import LoadedCheckpoint, load_strict
from brainsegfounder.errors import UserError
from brainsegfounder.networks import (
    ARCHITECTURE_SIZES,
    ArchitectureConfig,
    ResEncUNetConfig,
    architecture_name,
    sized_config,
)

from ..harness.initial_weights import InitReport, inflate, same_tensors
from .head import ssl_config_of_recipe
from .task_checks import SWIN_ONLY
from .tasks import Pretext, check_task_fits


def ckpt_task(ckpt: LoadedCheckpoint) -> str:
    """The pretext task a checkpoint was trained with ("" for fine-tuned models)."""
    if ckpt.meta is not None and ckpt.meta.task == "ssl":
        return ckpt.meta.provenance.get("task", "brainsegfounder")
    return "brainsegfounder" if ckpt.kind == "ssl" else ""


def backbone_config(recipe: dict, task: Pretext, init_ckpt) -> ArchitectureConfig:
    """The network config of the run: the recipe's architecture and size, the task's outputs."""
    wanted = recipe["model"]["architecture"]
    if wanted == "auto":
        architecture = init_ckpt.network.NAME if init_ckpt is not None else "SwinUNETR"
    else:
        architecture = architecture_name(wanted)
    if init_ckpt is not None and architecture != init_ckpt.network.NAME:
        raise UserError(
            f"the init checkpoint {init_ckpt.path.name} is a {init_ckpt.network.NAME} but model.architecture is "
            f"{architecture}; set model.architecture=auto or start from a {architecture} model"
        )
    channels, size = len(recipe["modalities"]), recipe["model"]["size"]
    if architecture == "SwinUNETR" and task.name in SWIN_ONLY:
        config = ssl_config_of_recipe(recipe, init_ckpt)  # BrainSegFounder's encoder sizes and checks
    elif size == "auto":
        config = replace(init_ckpt.network, in_channels=channels)
    elif size not in ARCHITECTURE_SIZES[architecture]:
        raise UserError(
            f"unknown model.size {size!r} for {architecture}; choose {', '.join(ARCHITECTURE_SIZES[architecture])} "
            "or auto"
        )
    else:
        order = {"merge_order": init_ckpt.network.merge_order} if init_ckpt and architecture == "SwinUNETR" else {}
        config = sized_config(architecture, size, channels, 0, **order)
        if init_ckpt is not None and _shape(config) != _shape(init_ckpt.network):
            raise UserError(
                f"the init checkpoint is {init_ckpt.network.summary()}, but model.size {size} is "
                f"{config.summary()}; set model.size=auto or the matching size"
            )
    config = replace(config, out_channels=task.out_channels())
    check_task_fits(task, config)
    config.check_roi(recipe["model"]["roi"], "recipe model.roi")
    return config


def _shape(config: ArchitectureConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in ("in_channels", "out_channels")}


def _output_layers(model, config) -> tuple:
    """State-dict prefixes of the layers whose rows are the reconstruction's channels."""
    if hasattr(model, "decoder") and hasattr(model.decoder, "project"):  # SwinMAE's light decoder
        return ("decoder.project.",)
    if isinstance(config, ResEncUNetConfig):  # one segmentation layer per decoder stage (the last one used)
        return ("decoder.seg_layers.",)
    return (config.output_layer + ".",)


def _map_rows(value, rows, source, target):
    """Output rows (leading, then ``per`` rows for each source channel) -> one group per target."""
    leading, per = rows
    head, rest = value[:leading], value[leading:]
    grouped = rest.reshape(len(source), per, *rest.shape[1:])
    mapped, how = inflate(grouped.float(), source, target, axis=0, scale=False)
    return torch.cat([head.float(), mapped.reshape(-1, *rest.shape[1:])]), how


def load_start(model, config, task: Pretext, ckpt: LoadedCheckpoint, target_modalities, source_modalities=None):
    """Start ``model`` (built by ``task`` from ``config``) from ``ckpt``; returns an InitReport."""
    report = InitReport(source=str(ckpt.path), kind=ckpt.kind)
    source = list(ckpt.meta.modalities) if ckpt.meta is not None else source_modalities
    same_task = ckpt_task(ckpt) == task.name
    target = model.state_dict()
    state = dict(target)
    out_layers, rows = _output_layers(model, config), task.output_rows()
    input_kernels = same_tensors(target, config.INPUT_KERNELS)
    for key, value in ckpt.state_dict.items():
        if key not in target or not (same_task or key.startswith(config.ENCODER_PREFIXES)):
            report.ignored.append(key)
            continue
        wanted = target[key].shape
        if key in input_kernels and value.shape[1] != wanted[1] and value.shape[2:] == wanted[2:]:
            state[key], report.inflated[key] = inflate(value.float(), source, target_modalities)
        elif rows and source and key.startswith(out_layers) and value.shape[1:] == wanted[1:]:
            if value.shape[0] == wanted[0]:
                state[key] = value
            else:
                state[key], report.inflated[key] = _map_rows(value, rows, source, target_modalities)
        elif value.shape == wanted:
            state[key] = value
        else:
            raise UserError(
                f"{ckpt.path.name}: {key} has shape {tuple(value.shape)}, this network {tuple(wanted)}; "
                "it is a different architecture (check model.size)"
            )
        report.loaded.append(key)
    missing = sorted(k for k in target if k.startswith(config.ENCODER_PREFIXES) and k not in ckpt.state_dict)
    if missing:
        raise UserError(
            f"{ckpt.path.name} lacks {len(missing)} encoder tensors ({', '.join(missing[:3])}); "
            "it is a different architecture"
        )
    load_strict(model, state, f"initialisation from {ckpt.path.name}")
    loaded = same_tensors(target, report.loaded)  # a tensor loaded under one name is under all
    report.reinitialised = sorted(k for k in target if k not in loaded)
    report.loaded.sort()
    report.ignored.sort()
    return report
