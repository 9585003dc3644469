"""Where named models live: ``--model NAME`` looks in the local model folder.

The folder is ``$BRAINSEGFOUNDER_HOME/models`` (default ``~/.brainsegfounder/models``), kept
outside any Slicer or Python installation so models survive upgrades. A model is a checkpoint
file ``NAME.pt`` there; a path to any checkpoint works as well.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

from .atomic import atomic_path
from .checkpoints import load_checkpoint, resolve_meta
from .errors import UserError
from .names import plain_name

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def home() -> Path:
    return Path(os.environ.get("BRAINSEGFOUNDER_HOME") or Path.home() / ".brainsegfounder")


def models_dir() -> Path:
    return home() / "models"


def local_models() -> Dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()}


def resolve_model(name_or_path: str) -> Path:
    """A checkpoint path for a path or a local model name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    models = local_models()
    if name_or_path in models:
        return models[name_or_path]
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in name_or_path:
        raise UserError(f"model file {name_or_path} does not exist; check the path")
    known = ", ".join(models) or "none yet"
    raise UserError(
        f"unknown model {name_or_path!r}; give a checkpoint path or one of the models in {models_dir()} ({known})"
    )


def free_name(name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... if a local model already has it."""
    models = local_models()
    candidate, n = name, 1
    while candidate in models:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def describe(path: os.PathLike, task: Optional[str] = None) -> dict:
    """What a panel needs to offer a model without loading torch: name, version, task, inputs in
    channel order, label schema, ROI, description and provenance (from the checkpoint's metadata)."""
    ckpt = load_checkpoint(path)
    if ckpt.is_encoder_only:
        raise UserError(
            f"{Path(path).name} is a self-supervised encoder without a segmentation head; it can be "
            "fine-tuned (finetune --base) but cannot segment"
        )
    meta = resolve_meta(ckpt, task).to_dict()
    meta.pop("network")
    return meta


def description_path(model: os.PathLike) -> Path:
    """The JSON beside a local model that describes it (``NAME.json`` for ``NAME.pt``)."""
    return Path(model).with_suffix(".json")


def register_model(source: os.PathLike, name: str, task: Optional[str] = None) -> Path:
    """Copy a checkpoint into the local model folder as ``NAME.pt`` with its description
    ``NAME.json`` (atomically; an existing model of that name is never replaced: the next free
    ``NAME-N`` is used). The checkpoint is loaded first, so only a usable model is registered."""
    plain_name(name, "model name")
    description = describe(source, task)
    folder = models_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the model folder {folder} ({error.strerror}); "
            "set BRAINSEGFOUNDER_HOME to a folder you can write to"
        ) from None
    target = folder / f"{free_name(name)}.pt"
    description.update(local_name=target.stem, source_file=str(source))
    with (
        atomic_path(target, suffix=".tmp") as tmp,
        atomic_path(description_path(target), suffix=".tmp") as tmp_description,
    ):
        shutil.copyfile(source, tmp)
        tmp_description.write_text(json.dumps(description, indent=1) + "\n")
    return target
