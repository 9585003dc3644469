"""Fine-tuning recipes: the keys, their defaults and their checks.

A recipe names its task (a preset of the engine, ``generic`` with its own modalities and
labels, or ``from_base`` to take everything from the base model), the network, how the
weights start, the data and the training schedule. Bundled recipes live in Training/configs.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from brainsegfounder.errors import UserError
from brainsegfounder.names import plain_name
from brainsegfounder.networks import architecture_name

from ..harness.optimisation import OPTIMIZERS, SCHEDULES
from ..harness.recipe import (
    CONFIG_DIR,
    check_betas,
    check_choices,
    check_flags,
    check_numbers,
    check_open_fraction,
    check_optional_whole_numbers,
    check_roi,
    check_whole_numbers,
    read_recipe,
)

RESUMABLE = ("train.epochs",)  # what may change when a run is resumed

DEFAULTS: Dict[str, Any] = {
    "task": "brats",  # brats, atlas, generic or from_base
    "modalities": None,  # generic: input names in channel order, e.g. [t1, flair]
    "labels": None,  # generic: label names for values 1..N, e.g. [lesion, edema]
    "orientation": "RAS",  # generic: index-axis orientation the network sees
    "model": {
        # swinunetr, resenc or pctnet; auto: the init checkpoint's (SwinUNETR from scratch)
        "architecture": "auto",
        # swinunetr: 62M, 64M, 70M, 277M, small, tiny; resenc: L, M, tiny; pctnet: 45M, tiny;
        # or auto (the init checkpoint's)
        "size": "62M",
        "roi": [128, 128, 128],  # or auto: the init checkpoint's training ROI
        "gradient_checkpointing": False,
        "name": None,  # model name written into the checkpoint (default: the run folder)
        "save_dtype": "float32",  # float16 halves the size of the exported model
    },
    "init": {
        "checkpoint": None,  # None = from scratch; a path or local model name
        "encoder_only": False,  # take only the Swin encoder from a full model
        "modalities": None,  # input names of a checkpoint without metadata, to inflate by name
        "output_prior": 0.05,  # a new output layer starts predicting this foreground probability
    },
    "data": {
        "path": None,  # datalist.json, a BraTS 2021/2023 or ATLAS folder, or saved cases
        "split": "folds",  # folds: hold out fold `fold`; fraction: hold out val_fraction
        "folds": 5,
        "fold": 0,
        "val_fraction": 0.2,
        "label_fraction": 1.0,  # share of the training split used (label-efficiency studies)
        "replay": None,  # data set mixed into training (never into validation)
        "replay_ratio": 1.0,  # replay cases per training case
        "cache": "none",  # none, memory or disk (run folder/cache)
        "workers": 2,
        "label_convention": "auto",  # brats2021 (ET=4), brats2023 (ET=3) or auto
        "max_val_cases": None,
    },
    "train": {
        "epochs": 300,
        "batch_size": 2,
        "lr": 1.0e-4,
        "weight_decay": 1.0e-5,
        "warmup_epochs": 50,  # linear warm-up (the 3D MAE's fine-tuning: 50, with sgd and poly)
        "optimizer": "adamw",  # adamw, adam, or sgd (Nesterov, train.momentum): the 3D MAE fine-tunes with sgd
        "betas": [0.9, 0.999],  # adam / adamw
        "momentum": 0.99,  # sgd
        "schedule": "cosine",  # after the warm-up: cosine, or poly (nnU-Net's (1 - t)^0.9)
        "loss": "dice",  # dice (BrainSegFounder), dice_ce
        "amp": True,  # CUDA only: bf16 where supported, else fp16 with loss scaling
        "seed": 0,
        "val_every": 1,
        "steps_per_epoch": None,  # None: one pass over the training cases
        "crop": "random",  # random (BrainSegFounder) or posneg (foreground-weighted)
        "pos_fraction": 0.5,
        "log_every": 1,
    },
    "augment": {"flip": 0.5, "intensity_scale": 0.1, "intensity_shift": 0.1},
    "validation": {"overlap": 0.5, "sw_batch_size": 1, "threshold": 0.5},
    "output": {"dir": "runs/finetune"},
    "register": None,  # a name: copy the best model into the local model registry
}

CHOICES = {
    "data.split": ("folds", "fraction"),
    "data.cache": ("none", "memory", "disk"),
    "data.label_convention": ("auto", "brats2021", "brats2023"),
    "train.loss": ("dice", "dice_ce"),
    "train.crop": ("random", "posneg"),
    "model.save_dtype": ("float32", "float16"),
    "train.optimizer": OPTIMIZERS,
    "train.schedule": tuple(SCHEDULES),
}


def check_recipe(recipe: dict) -> None:
    """Every setting, before any data is read or model loaded: a bad value is one line at
    second one, not a crash after the first epoch."""
    check_choices(recipe, CHOICES)
    if recipe["model"]["architecture"] != "auto":
        architecture_name(recipe["model"]["architecture"])  # one line naming the choices if unknown
    check_whole_numbers(
        recipe, ("train.epochs", "train.batch_size", "train.val_every", "data.folds", "train.log_every")
    )
    check_whole_numbers(recipe, ("train.warmup_epochs", "train.seed", "data.workers", "data.fold"), minimum=0)
    check_optional_whole_numbers(recipe, ("train.steps_per_epoch", "data.max_val_cases", "validation.sw_batch_size"))
    check_numbers(
        recipe,
        {
            "data.label_fraction": "(0, 1]",
            "data.replay_ratio": "(0, inf)",
            "init.output_prior": "(0, 1)",
            "train.lr": "(0, inf)",
            "train.weight_decay": "[0, inf)",
            "train.momentum": "[0, 1)",
            "train.pos_fraction": "[0, 1]",
            "validation.overlap": "[0, 1)",
            "validation.threshold": "(0, 1)",
        },
    )
    check_numbers(
        recipe,
        {"augment.flip": "[0, 1]", "augment.intensity_scale": "[0, inf)", "augment.intensity_shift": "[0, inf)"},
        off_allowed=True,
    )
    check_flags(recipe, ("model.gradient_checkpointing", "init.encoder_only", "train.amp"))
    check_open_fraction(recipe, "data.val_fraction")
    check_betas(recipe)
    if not int(recipe["data"]["fold"]) < int(recipe["data"]["folds"]):
        raise UserError(f"recipe data.fold {recipe['data']['fold']} must be in 0..{recipe['data']['folds'] - 1}")
    if recipe["model"]["roi"] == "auto":
        if not recipe["init"]["checkpoint"]:
            raise UserError("model.roi auto takes the ROI of the init checkpoint; give one or set model.roi")
    else:
        check_roi(recipe["model"]["roi"])
    if recipe["task"] == "generic" and not (recipe["modalities"] and recipe["labels"]):
        raise UserError(
            "a generic recipe needs `modalities` (inputs in channel order) and `labels` (names of label values 1..N)"
        )
    if recipe["task"] == "from_base" and not recipe["init"]["checkpoint"]:
        raise UserError("task from_base needs a base model: give --base MODEL (init.checkpoint)")
    if recipe["register"] is not None:  # checked now, not when training is over
        plain_name(str(recipe["register"]), "--register")


def load_recipe(name_or_path: Optional[str], overrides: Iterable[str] = ()) -> dict:
    """A fine-tuning recipe: defaults <- the file (a path or a bundled name) <- overrides, checked."""
    return read_recipe(name_or_path, overrides, DEFAULTS, check_recipe, CONFIG_DIR)
