"""Recipes: YAML files of training settings, defaults for every key, and ``a.b=value`` overrides.

A recipe names its task (a preset of the engine, ``generic`` with its own modalities and
labels, or ``from_base`` to take everything from the base model), the network, how the
weights start, the data and the training schedule. Unknown keys are errors (a typo must not
silently train with a default), and the resolved recipe is written next to the run.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import yaml
from brainsegfounder.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

DEFAULTS: Dict[str, Any] = {
    "task": "brats",            # brats, atlas, generic or from_base
    "modalities": None,         # generic: input names in channel order, e.g. [t1, flair]
    "labels": None,             # generic: label names for values 1..N, e.g. [lesion, edema]
    "orientation": "RAS",       # generic: index-axis orientation the network sees
    "model": {
        "size": "62M",          # 62M, 64M, 70M, 277M, small, tiny, or auto (the init checkpoint's)
        "roi": [128, 128, 128],  # or auto: the init checkpoint's training ROI
        "gradient_checkpointing": False,
        "name": None,           # model name written into the checkpoint (default: the run folder)
        "save_dtype": "float32",  # float16 halves the size of the exported model
    },
    "init": {
        "checkpoint": None,     # None = from scratch; a path or local model name
        "encoder_only": False,  # take only the Swin encoder from a full model
        "modalities": None,     # input names of a checkpoint without metadata, to inflate by name
        "output_prior": 0.05,   # a new output layer starts predicting this foreground probability
    },
    "data": {
        "path": None,           # datalist.json, a BraTS 2021/2023 or ATLAS folder, or saved cases
        "split": "folds",       # folds: hold out fold `fold`; fraction: hold out val_fraction
        "folds": 5,
        "fold": 0,
        "val_fraction": 0.2,
        "label_fraction": 1.0,  # share of the training split used (label-efficiency studies)
        "replay": None,         # data set mixed into training (never into validation)
        "replay_ratio": 1.0,    # replay cases per training case
        "cache": "none",        # none, memory or disk (run folder/cache)
        "workers": 2,
        "label_convention": "auto",  # brats2021 (ET=4), brats2023 (ET=3) or auto
        "max_val_cases": None,
    },
    "train": {
        "epochs": 300,
        "batch_size": 2,
        "lr": 1.0e-4,
        "weight_decay": 1.0e-5,
        "warmup_epochs": 50,
        "loss": "dice",         # dice (BrainSegFounder), dice_ce
        "amp": True,            # CUDA only: bf16 where supported, else fp16 with loss scaling
        "seed": 0,
        "val_every": 1,
        "steps_per_epoch": None,  # None: one pass over the training cases
        "crop": "random",       # random (BrainSegFounder) or posneg (foreground-weighted)
        "pos_fraction": 0.5,
        "log_every": 1,
    },
    "augment": {"flip": 0.5, "intensity_scale": 0.1, "intensity_shift": 0.1},
    "validation": {"overlap": 0.5, "sw_batch_size": 1, "threshold": 0.5},
    "output": {"dir": "runs/finetune"},
    "register": None,           # a name: copy the best model into the local model registry
}

CHOICES = {
    "data.split": ("folds", "fraction"), "data.cache": ("none", "memory", "disk"),
    "data.label_convention": ("auto", "brats2021", "brats2023"), "train.loss": ("dice", "dice_ce"),
    "train.crop": ("random", "posneg"), "model.save_dtype": ("float32", "float16"),
}


def recipe_path(name_or_path: str, folder: Path = CONFIG_DIR) -> Path:
    """A recipe file: a path, or the name of one in ``folder`` (``brats`` -> configs/brats.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = folder / f"{name_or_path}.yaml"
    if os.sep not in name_or_path and bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise UserError(f"recipe {name_or_path} not found; give a YAML file or one of the bundled recipes ({known})")


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in base:
            raise UserError(f"unknown recipe key {name!r}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"recipe key {name!r} must be a mapping of {', '.join(sorted(base[key]))}")
            _merge(base[key], value, name + ".")
        else:
            base[key] = value
    return base


def parse_override(text: str) -> dict:
    """``train.epochs=5`` -> ``{"train": {"epochs": 5}}`` (the value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like key.sub=value, e.g. train.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise UserError(f"cannot parse the value of override {text!r} as YAML") from None
    result: Dict[str, Any] = {}
    node = result
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parsed
    return result


def load_recipe(name_or_path: Optional[str], overrides: Iterable[str] = (), defaults: Optional[dict] = None,
                check: Optional[Callable[[dict], None]] = None, folder: Path = CONFIG_DIR) -> dict:
    """Defaults <- recipe file <- overrides, checked (fine-tuning's unless others are given)."""
    recipe = copy.deepcopy(DEFAULTS if defaults is None else defaults)
    if name_or_path:
        path = recipe_path(name_or_path, folder)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"recipe {path} must be a mapping of settings")
        _merge(recipe, data)
    for text in overrides:
        _merge(recipe, parse_override(text))
    (check or check_recipe)(recipe)
    return recipe


def get(recipe: dict, dotted: str):
    node = recipe
    for part in dotted.split("."):
        node = node[part]
    return node


def check_recipe(recipe: dict) -> None:
    for key, allowed in CHOICES.items():
        if get(recipe, key) not in allowed:
            raise UserError(f"recipe {key} is {get(recipe, key)!r}; choose one of {', '.join(allowed)}")
    positive = ("train.epochs", "train.batch_size", "train.val_every", "data.folds", "train.log_every")
    for key in positive:
        if not isinstance(get(recipe, key), int) or get(recipe, key) < 1:
            raise UserError(f"recipe {key} must be a whole number of at least 1, got {get(recipe, key)!r}")
    if not 0 < float(recipe["data"]["label_fraction"]) <= 1:
        raise UserError("recipe data.label_fraction must be in (0, 1]")
    if not 0 < float(recipe["init"]["output_prior"]) < 1:
        raise UserError("recipe init.output_prior must be a probability in (0, 1)")
    if not 0 < float(recipe["data"]["val_fraction"]) < 1:
        raise UserError("recipe data.val_fraction must be in (0, 1)")
    if not 0 <= int(recipe["data"]["fold"]) < int(recipe["data"]["folds"]):
        raise UserError(f"recipe data.fold {recipe['data']['fold']} must be in 0..{recipe['data']['folds'] - 1}")
    roi = recipe["model"]["roi"]
    if roi == "auto":
        if not recipe["init"]["checkpoint"]:
            raise UserError("model.roi auto takes the ROI of the init checkpoint; give one or set model.roi")
        return
    if not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r >= 64 and r % 32 == 0 for r in roi)):
        raise UserError(f"recipe model.roi {roi!r} must be three multiples of 32, each at least 64")
    if recipe["task"] == "generic" and not (recipe["modalities"] and recipe["labels"]):
        raise UserError("a generic recipe needs `modalities` (inputs in channel order) and `labels` (names of "
                        "label values 1..N)")
    if recipe["task"] == "from_base" and not recipe["init"]["checkpoint"]:
        raise UserError("task from_base needs a base model: give --base MODEL (init.checkpoint)")


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)
