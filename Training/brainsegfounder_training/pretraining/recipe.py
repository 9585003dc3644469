"""Pretraining recipes: BrainSegFounder's self-supervised recipe, in the fine-tuning recipes' format.

Stage 1 trains on a healthy cohort (e.g. UK Biobank T1 + T2-FLAIR), stage 2 on the target
data set's own images, starting from stage 1 (``init.checkpoint``) with the input kernels
inflated to the new channels. Bundled recipes live in Training/configs/pretrain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from brainsegfounder.errors import UserError
from brainsegfounder.modalities import canonical

from ..harness.recipe import (
    CONFIG_DIR,
    check_choices,
    check_flags,
    check_numbers,
    check_open_fraction,
    check_roi,
    check_whole_numbers,
    read_recipe,
)

PRETRAIN_CONFIG_DIR = CONFIG_DIR / "pretrain"

PRETRAIN_DEFAULTS = {
    "stage": 1,  # 1: healthy cohort from scratch; 2: target cohort from a stage-1 checkpoint
    "modalities": ["t1", "flair"],  # input names in channel order
    "orientation": "RAS",  # index-axis orientation the network sees (the fine-tuning task's, for stage 2)
    "model": {
        "size": "62M",  # 62M, 64M, 70M, 277M, small, tiny, or auto (the init checkpoint's)
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
    "train": {
        "steps": 100000,
        "warmup_steps": 500,
        "batch_size": 2,  # volumes per GPU
        "crops_per_volume": 2,  # 96^3 crops per volume (2 x 2 per GPU, as BrainSegFounder)
        "lr": 4.0e-4,
        "weight_decay": 0.1,
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

PRETRAIN_CHOICES = {"data.cache": ("none", "disk"), "ssl.rotation_plane": ("original", "axial")}
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
    if recipe["train"]["batch_size"] * recipe["train"]["crops_per_volume"] < 2:
        raise UserError(
            "contrastive coding needs at least 2 crops per step: raise train.batch_size or train.crops_per_volume"
        )
    check_open_fraction(recipe, "data.val_fraction")
    weights = [float(recipe["ssl"][k]) for k in ("rotation_weight", "contrastive_weight", "reconstruction_weight")]
    if sum(weights) == 0:
        raise UserError("recipe ssl weights must not all be 0")
    modalities = recipe["modalities"]
    if not (isinstance(modalities, list) and modalities and all(isinstance(m, str) for m in modalities)):
        raise UserError("recipe modalities must list the input names in channel order, e.g. [t1, flair]")
    names = [canonical(m) or m.lower() for m in modalities]
    if len(set(names)) != len(names):
        raise UserError(f"recipe modalities {modalities} name a contrast twice")
    roi = recipe["model"]["roi"]
    check_roi(roi)
    plane = recipe["ssl"]["rotation_plane"]
    a, b = (1, 2) if plane == "original" else (0, 1)
    if roi[a] != roi[b]:
        which = "last" if plane == "original" else "first"
        raise UserError(
            f"recipe model.roi {roi!r}: the {which} two sides must be equal (crops are rotated in that "
            f"plane, ssl.rotation_plane {plane})"
        )
    if recipe["stage"] not in (1, 2):
        raise UserError("recipe stage must be 1 or 2")
    if recipe["stage"] == 2 and not recipe["init"]["checkpoint"]:
        raise UserError("stage 2 starts from a stage-1 model: give --init STAGE1_RUN/best.pt (init.checkpoint)")
    if recipe["model"]["size"] == "auto" and not recipe["init"]["checkpoint"]:
        raise UserError("model.size auto takes the architecture of the init checkpoint; give one or set model.size")


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
