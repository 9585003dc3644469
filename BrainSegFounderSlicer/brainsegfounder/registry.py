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
from typing import Dict, List, Optional

from .atomic import atomic_path
from .checkpoints import load_checkpoint, resolve_meta
from .errors import UserError
from .names import plain_name

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


# Models this project knows (shipped with it or downloadable): the registry the panel shows too.
RESOURCES_DIR = Path(__file__).resolve().parents[2] / "Resources"
REGISTRY_FILE = RESOURCES_DIR / "models.json"


def home() -> Path:
    return Path(os.environ.get("BRAINSEGFOUNDER_HOME") or Path.home() / ".brainsegfounder")


def models_dir() -> Path:
    return home() / "models"


def downloads_dir() -> Path:
    return home() / "downloads"


def entry_file(
    file: str, bundled: Optional[str] = None, resources: Path = RESOURCES_DIR, cache: Optional[Path] = None
) -> Optional[Path]:
    """Where a registry model's file is on this computer: shipped with the extension, or
    downloaded / imported into the cache; None if it is not here."""
    candidates = [(cache or downloads_dir()) / file]
    if bundled:
        candidates.insert(0, resources / bundled)
    return next((p for p in candidates if p.is_file()), None)


def registry_models() -> List[dict]:
    """The registry's entries, each with ``path`` (None where the file is not here yet)."""
    try:
        entries = json.loads(REGISTRY_FILE.read_text()).get("models", [])
    except (OSError, ValueError, AttributeError):
        return []  # an engine installed without the extension's resources
    return [{**e, "path": entry_file(str(e.get("file", "")), e.get("bundled"))} for e in entries if e.get("file")]


def local_models() -> Dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()}


def resolve_model(name_or_path: str) -> Path:
    """A checkpoint path for a path, a registry model's id (``brats-synthetic-demo``) or a local
    model name. A path is returned as given: reading it says what is wrong with it."""
    path = Path(name_or_path).expanduser()
    looks_like_a_path = os.sep in name_or_path or (os.altsep or os.sep) in name_or_path
    if path.exists() or path.is_symlink() or looks_like_a_path or path.suffix in CHECKPOINT_SUFFIXES:
        return path
    shipped = {e["id"]: e["path"] for e in registry_models()}
    if shipped.get(name_or_path):
        return shipped[name_or_path]
    if name_or_path in shipped:
        raise UserError(
            f"model {name_or_path!r} is in the registry but not on this computer; download it in the Slicer "
            "panel, or give the path of its file"
        )
    models = local_models()
    if name_or_path in models:
        return models[name_or_path]
    known = ", ".join([*(k for k, v in shipped.items() if v), *models]) or "none yet"
    raise UserError(
        f"unknown model {name_or_path!r}; give a checkpoint path or one of the models here ({known}); "
        "brainsegfounder models list shows them"
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
