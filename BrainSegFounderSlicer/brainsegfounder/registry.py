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
from .checkpoints import load_checkpoint, resolve_meta, state_payload
from .errors import UserError
from .names import plain_name

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
UNKNOWN_LICENCE = "not stated (ask whoever made the model)"


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


def check_entry(data) -> dict:
    """A registry entry whose names are safe to use: its id is a model name, its ``file`` can
    never leave the download cache nor its ``bundled`` path the Resources folder."""
    if not isinstance(data, dict):
        raise UserError(f"model registry entry {data!r} is not an object; fix the registry file")
    for key in ("id", "file", "license"):
        if key not in data:
            raise UserError(f"model registry entry {data.get('id', '?')!r} lacks {key!r}; fix the registry file")
    plain_name(data["id"], "model id")
    plain_name(data["file"], "model file name")
    bundled = data.get("bundled")
    if bundled is not None and (
        not isinstance(bundled, str) or Path(bundled).is_absolute() or ".." in Path(bundled).parts
    ):
        raise UserError(f"model {data['id']}: bundled must be a path inside Resources")
    return data


def read_registry(path: os.PathLike = REGISTRY_FILE) -> List[dict]:
    """The registry's entries, each checked (:func:`check_entry`)."""
    try:
        entries = json.loads(Path(path).read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read the model registry {path} ({error}); reinstall the extension") from None
    if not isinstance(entries, list):
        raise UserError(f"the model registry {path} has no list of models; reinstall the extension")
    return [check_entry(entry) for entry in entries]


def registry_models() -> List[dict]:
    """The registry's entries, each with ``path`` (None where the file is not here yet) and
    ``source``: "shipped" (with the extension), "downloaded" or "not downloaded"."""
    if not REGISTRY_FILE.exists():
        return []  # an engine installed without the extension's resources
    found = []
    for entry in read_registry(REGISTRY_FILE):
        path = entry_file(entry["file"], entry.get("bundled"))
        shipped = entry.get("bundled") and path == RESOURCES_DIR / entry["bundled"]
        source = "shipped" if shipped else "not downloaded" if path is None else "downloaded"
        found.append({**entry, "path": path, "source": source})
    return found


def local_models() -> Dict[str, Path]:
    folder = models_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()}


def local_model_task(path: os.PathLike, field: str = "task") -> str:
    """A local model's task (or another ``field`` such as "architecture") from the description
    written beside it ("" if it has none), read without loading torch."""
    try:
        value = json.loads(description_path(path).read_text()).get(field, "")
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


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
    """``name``, or ``name-2``, ``name-3``, ... if a local model already has it, or a registry
    model (which ``--model NAME`` finds first, so a local model of that name could not be used)."""
    models = {*local_models(), *(e["id"] for e in registry_models())}
    candidate, n = name, 1
    while candidate in models:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def describe(path: os.PathLike, task: Optional[str] = None) -> dict:
    """What a panel needs to offer a model without loading torch: name, version, task, inputs in
    channel order, label schema, ROI, description and provenance (from the checkpoint's metadata)."""
    return _description(load_checkpoint(path), task)


def _description(ckpt, task: Optional[str]) -> dict:
    if ckpt.is_pretext:
        raise UserError(
            f"{ckpt.path.name} is a self-supervised (pretext-task) model without a segmentation head; it can be "
            "fine-tuned (finetune --base) but cannot segment"
        )
    meta = resolve_meta(ckpt, task).to_dict()
    meta.pop("network")
    meta["architecture"] = ckpt.network.NAME  # what the model list shows beside the task
    return meta


def description_path(model: os.PathLike) -> Path:
    """The JSON beside a local model that describes it (``NAME.json`` for ``NAME.pt``)."""
    return Path(model).with_suffix(".json")


def register_model(
    source: os.PathLike,
    name: str,
    task: Optional[str] = None,
    merge_order: Optional[str] = None,
    licence: Optional[str] = None,
) -> Path:
    """Copy a checkpoint into the local model folder as ``NAME.pt`` with its description
    ``NAME.json`` (atomically; an existing model of that name is never replaced: the next free
    ``NAME-N`` is used). The checkpoint is loaded first, so only a usable model is registered.

    With ``merge_order`` (for a file without metadata trained with MONAI >= 1.5) the copy is
    written in our format with its metadata, so the order travels with the weights. The
    description names the model's licence: ``licence``, else the one its metadata records."""
    plain_name(name, "model name")
    ckpt = load_checkpoint(source, merge_order)
    description = _description(ckpt, task)
    folder = models_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the model folder {folder} ({error.strerror}); "
            "set BRAINSEGFOUNDER_HOME to a folder you can write to"
        ) from None
    target = folder / f"{free_name(name)}.pt"
    description.update(
        local_name=target.stem,
        source_file=str(source),
        license=licence or description.get("provenance", {}).get("license") or UNKNOWN_LICENCE,
    )
    with (
        atomic_path(target, suffix=".tmp") as tmp,
        atomic_path(description_path(target), suffix=".tmp") as tmp_description,
    ):
        if merge_order:  # written in our format, so the order travels with the weights
            import torch

            meta = resolve_meta(ckpt, task)
            meta.provenance["merge_order"] = f"{merge_order}, as given when the model was registered"
            torch.save(state_payload(ckpt.state_dict, meta), tmp)
        else:
            shutil.copyfile(source, tmp)
        tmp_description.write_text(json.dumps(description, indent=1) + "\n")
    return target
