"""Pretraining recipes: BrainSegFounder's self-supervised recipe and the other seeds' pretext
tasks (``task``: see :mod:`.tasks`), in the fine-tuning recipes' format.

Stage 1 trains on a healthy cohort (e.g. UK Biobank T1 + T2-FLAIR), stage 2 on the target
data set's own images, starting from stage 1 (``init.checkpoint``) with the input kernels
inflated to the new channels. Bundled recipes live in Training/configs/pretrain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from brainsegfounder.errors import UserError
from brainsegfounder.modalities import canonical

from ..harness.optimisation import OPTIMIZERS, SCHEDULES
from ..harness.recipe import (
    CONFIG_DIR,
    check_betas,
    check_choices,
    check_flags,
    check_numbers,
    check_open_fraction,
    check_roi,
    check_whole_numbers,
    read_recipe,
)
from .task_checks import TASK_NAMES, check_backbone, masked_block_count

PRETRAIN_CONFIG_DIR = CONFIG_DIR / "pretrain"

PRETRAIN_DEFAULTS = {
    # brainsegfounder, swin-mae, mae, volume-fusion, brainsegfounder+swin-mae, volume-fusion+mae
    "task": "brainsegfounder",
    "stage": 1,  # 1: healthy cohort from scratch; 2: target cohort from a stage-1 checkpoint
    "modalities": ["t1", "flair"],  # input names in channel order
    "orientation": "RAS",  # index-axis orientation the network sees (the fine-tuning task's, for stage 2)
    "model": {
        # swinunetr, resenc or pctnet; auto: the init checkpoint's (SwinUNETR from scratch)
        "architecture": "auto",
        # swinunetr: 62M, 64M, 70M, 277M, small, tiny; resenc: L, M, tiny; pctnet: 45M, tiny;
        # or auto (the init checkpoint's)
        "size": "62M",
        "roi": [96, 96, 96],
        "gradient_checkpointing": True,
        "flash_attention": True,  # PyTorch scaled-dot-product attention inside the Swin windows
        "name": None,  # model name written into the checkpoint (default: the run folder)
    },
    "init": {
        "checkpoint": None,  # stage 2: the stage-1 model (ours, or BrainSegFounder's SSL release)
        "modalities": None,  # input names of a checkpoint without metadata, to inflate by name
    },
    "data": {
        "path": None,  # datalist.json, BIDS, UK Biobank-style, BraTS or plain folders
        "validation": None,  # optional separate validation cohort (else held out from data.path)
        "val_fraction": 0.05,  # BrainSegFounder held out 1,917 of 41,400 (4.6%)
        "max_val_subjects": 200,
        "cache": "none",  # none, or disk: preprocessed volumes kept in cache_dir (float16)
        "cache_dir": None,  # default: the run folder's cache/
        "workers": 4,
        "max_tries": 20,  # unreadable subjects in a row before the run stops (a lost disk, not a bad file)
    },
    "ssl": {
        "rotation_weight": 1.0,
        "contrastive_weight": 1.0,
        "reconstruction_weight": 1.0,
        "temperature": 0.5,
        "gather_negatives": True,  # NT-Xent negatives from every GPU (BrainSegFounder used its own GPU's only)
        "max_drop": 0.3,  # up to this share of voxels replaced by noise cuboids
        "max_block": 0.25,  # largest cuboid side, as a share of the crop side
        "cross_sample": True,  # also paste cuboids from another sample of the batch
        # original: BrainSegFounder's plane, the crop's last two axes (sagittal in RAS / LPS);
        # axial: the first two. The released SSL weights' rotation head knows the original plane.
        "rotation_plane": "original",
    },
    "mae": {  # mae, swin-mae and the combinations with them
        "weight": 1.0,  # in a combination: the MAE loss's weight
        "mask_ratio": 0.75,  # share of the blocks hidden
        "block": 16,  # side of a hidden block (voxels); swin-mae: a multiple of 16
    },
    "volume_fusion": {  # volume-fusion and volume-fusion+mae (MIS-FM)
        "weight": 1.0,  # in a combination: the fusion loss's weight
        "classes": 4,  # K: coefficients c / K for c in 1..K; the network segments K + 1 classes
        "boxes": [10, 40],  # fewest and most boxes per crop
        "box_size": [0.0625, 0.625],  # a box side's smallest and largest share of the crop side
    },
    "train": {
        "steps": 100000,
        "warmup_steps": 500,
        "batch_size": 2,  # volumes per GPU
        "crops_per_volume": 2,  # 96^3 crops per volume (2 x 2 per GPU, as BrainSegFounder)
        "lr": 4.0e-4,
        "weight_decay": 0.1,
        "optimizer": "adamw",  # adamw, adam, or sgd (Nesterov, train.momentum)
        "betas": [0.9, 0.999],  # adam / adamw
        "momentum": 0.99,  # sgd
        "schedule": "cosine",  # after the warm-up: cosine, or poly (nnU-Net's (1 - t)^0.9)
        "amp": True,  # CUDA only: bf16 where supported, else fp16 with loss scaling
        "seed": 0,
        "val_every": 500,
        "save_every": 100,  # steps between resumable checkpoints (also saved on stop / preemption)
        "log_every": 10,
        "grad_clip": None,
        "anomaly_detection": False,  # torch.autograd anomaly mode: for debugging only, it is slow
    },
    "output": {"dir": "runs/pretrain"},
}

PRETRAIN_CHOICES = {
    "data.cache": ("none", "disk"),
    "ssl.rotation_plane": ("original", "axial"),
    "task": TASK_NAMES,
    "train.optimizer": OPTIMIZERS,
    "train.schedule": tuple(SCHEDULES),
}
PRETRAIN_RESUMABLE = ("train.steps", "train.val_every", "train.save_every", "train.log_every", "data.workers")


def check_pretrain(recipe: dict) -> None:
    check_choices(recipe, PRETRAIN_CHOICES)
    check_whole_numbers(
        recipe,
        (
            "train.steps",
            "train.batch_size",
            "train.crops_per_volume",
            "train.val_every",
            "train.save_every",
            "train.log_every",
            "data.max_val_subjects",
            "data.max_tries",
        ),
    )
    check_whole_numbers(recipe, ("train.warmup_steps", "train.seed", "data.workers"), minimum=0)
    check_numbers(recipe, {"train.lr": "(0, inf)", "train.weight_decay": "[0, inf)"})
    if recipe["train"]["grad_clip"] is not None:
        check_numbers(recipe, {"train.grad_clip": "(0, inf)"})
    check_flags(
        recipe,
        (
            "model.gradient_checkpointing",
            "model.flash_attention",
            "ssl.gather_negatives",
            "ssl.cross_sample",
            "train.amp",
            "train.anomaly_detection",
        ),
    )
    check_numbers(
        recipe,
        {
            "ssl.temperature": "(0, inf)",
            "ssl.max_drop": "[0, 1)",
            "ssl.max_block": "(0, 1]",
            "ssl.rotation_weight": "[0, inf)",
            "ssl.contrastive_weight": "[0, inf)",
            "ssl.reconstruction_weight": "[0, inf)",
        },
    )
    check_open_fraction(recipe, "data.val_fraction")
    check_numbers(recipe, {"train.momentum": "[0, 1)", "mae.weight": "[0, inf)", "volume_fusion.weight": "[0, inf)"})
    check_betas(recipe)
    modalities = recipe["modalities"]
    if not (isinstance(modalities, list) and modalities and all(isinstance(m, str) for m in modalities)):
        raise UserError("recipe modalities must list the input names in channel order, e.g. [t1, flair]")
    names = [canonical(m) or m.lower() for m in modalities]
    if len(set(names)) != len(names):
        raise UserError(f"recipe modalities {modalities} name a contrast twice")
    _check_task(recipe)
    if recipe["stage"] not in (1, 2):
        raise UserError("recipe stage must be 1 or 2")
    if recipe["stage"] == 2 and not recipe["init"]["checkpoint"]:
        raise UserError("stage 2 starts from a stage-1 model: give --init STAGE1_RUN/best.pt (init.checkpoint)")
    if recipe["model"]["size"] == "auto" and not recipe["init"]["checkpoint"]:
        raise UserError("model.size auto takes the architecture of the init checkpoint; give one or set model.size")


def _check_brainsegfounder(recipe: dict) -> None:
    """BrainSegFounder's three tasks: two crops for the contrastive task, square rotation planes."""
    if recipe["train"]["batch_size"] * recipe["train"]["crops_per_volume"] < 2:
        raise UserError(
            "contrastive coding needs at least 2 crops per step: raise train.batch_size or train.crops_per_volume"
        )
    weights = [float(recipe["ssl"][k]) for k in ("rotation_weight", "contrastive_weight", "reconstruction_weight")]
    if sum(weights) == 0:
        raise UserError("recipe ssl weights must not all be 0")
    roi, plane = recipe["model"]["roi"], recipe["ssl"]["rotation_plane"]
    a, b = (1, 2) if plane == "original" else (0, 1)
    if roi[a] != roi[b]:
        which = "last" if plane == "original" else "first"
        raise UserError(
            f"recipe model.roi {roi!r}: the {which} two sides must be equal (crops are rotated in that "
            f"plane, ssl.rotation_plane {plane})"
        )


def _check_task(recipe: dict) -> None:
    """The task against the backbone, the crop and its own settings: one line each, before any data."""
    from brainsegfounder.networks import ARCHITECTURE_SIZES, architecture_name, sized_config

    task, roi = recipe["task"], recipe["model"]["roi"]
    architecture = recipe["model"]["architecture"]
    architecture = None if architecture == "auto" else architecture_name(architecture)
    check_backbone(task, architecture)
    if architecture in (None, "SwinUNETR"):
        check_roi(roi)
    elif not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r > 0 for r in roi)):
        raise UserError(f"recipe model.roi {roi!r} must be three whole numbers of voxels, e.g. [128, 128, 128]")
    size = recipe["model"]["size"]
    if architecture and size != "auto":
        if size not in ARCHITECTURE_SIZES[architecture]:
            raise UserError(
                f"unknown model.size {size!r} for {architecture}; choose "
                f"{', '.join(ARCHITECTURE_SIZES[architecture])} or auto"
            )
        sized_config(architecture, size, 1, 1).check_roi(roi, "recipe model.roi")
    if task.startswith("brainsegfounder"):
        _check_brainsegfounder(recipe)
    if "mae" in task:
        check_whole_numbers(recipe, ("mae.block",))
        check_numbers(recipe, {"mae.mask_ratio": "(0, 1)"})
        block = int(recipe["mae"]["block"])
        if "swin-mae" in task and block % 16:
            raise UserError(f"mae.block {block} must be a multiple of 16 for {task} (the stride-16 stage's voxels)")
        masked_block_count(roi, block, float(recipe["mae"]["mask_ratio"]))
    if task.startswith("volume-fusion"):
        vf = recipe["volume_fusion"]
        check_whole_numbers(recipe, ("volume_fusion.classes",))
        boxes, sizes = vf["boxes"], vf["box_size"]
        if not (
            isinstance(boxes, list)
            and len(boxes) == 2
            and all(isinstance(b, int) for b in boxes)
            and 1 <= boxes[0] <= boxes[1]
        ):
            raise UserError(f"recipe volume_fusion.boxes {boxes!r} must be [fewest, most] boxes, e.g. [10, 40]")
        if not (
            isinstance(sizes, list)
            and len(sizes) == 2
            and all(isinstance(b, (int, float)) for b in sizes)
            and 0 < sizes[0] <= sizes[1] <= 1
        ):
            raise UserError(
                f"recipe volume_fusion.box_size {sizes!r} must be [smallest, largest] shares of the crop side in "
                "(0, 1], e.g. [0.0625, 0.625]"
            )
        if int(recipe["train"]["batch_size"]) < 2:
            raise UserError(
                f"task {task} fuses crops of two subjects: set train.batch_size (volumes per step) to 2 or more"
            )


def load_pretrain_recipe(name_or_path: Optional[str], overrides: Iterable[str] = ()) -> dict:
    return read_recipe(name_or_path, overrides, PRETRAIN_DEFAULTS, check_pretrain, PRETRAIN_CONFIG_DIR)


def keep_started_rotation_plane(recipe: dict, saved: Path) -> dict:
    """A run started before ``ssl.rotation_plane`` existed turned its crops in the axial plane
    (then the only one): resumed, it keeps that plane rather than switch mid-run to the default."""
    import yaml

    try:
        started = (yaml.safe_load(Path(saved).read_text()) or {}).get("ssl") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return recipe  # the run's recipe was read a moment ago; a failure here is the loader's to report
    if "rotation_plane" not in started:
        recipe["ssl"]["rotation_plane"] = "axial"
    return recipe
