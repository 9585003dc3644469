"""Model licences: which a model comes under, and acceptance of those that need it.

Every registry entry names its licence (``license`` in Resources/models.json); one whose terms
must be agreed to before use (BrainSegFounder's weights: the UK Biobank material transfer
agreement) also says ``"license_needs_acceptance": true``. Such a model is refused until its
licence is accepted, once per model and licence text, remembered in
``$BRAINSEGFOUNDER_HOME/licences.json``: a changed licence is asked for again.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Optional

from .atomic import atomic_path
from .errors import UserError
from .registry import home, registry_models


def accepted_file() -> Path:
    return home() / "licences.json"


def _accepted() -> dict:
    try:
        data = json.loads(accepted_file().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read the accepted licences {accepted_file()} ({error}); delete the file and accept again"
        ) from None
    return data if isinstance(data, dict) else {}


def is_accepted(model_id: str, licence: str) -> bool:
    return (_accepted().get(model_id) or {}).get("license") == licence


def registry_entry(name_or_path: str) -> Optional[dict]:
    """The registry entry a model name or checkpoint path stands for (its id, or its file where it
    was downloaded or shipped), or None for a model the registry does not know."""
    path = Path(name_or_path).expanduser()
    for entry in registry_models():
        if entry["id"] == name_or_path:
            return entry
        if entry["path"] is not None and path.exists() and path.resolve() == Path(entry["path"]).resolve():
            return entry
    return None


def pending(name_or_path: str) -> Optional[dict]:
    """The registry entry of a model whose licence must still be accepted, else None."""
    entry = registry_entry(name_or_path)
    if entry is None or not entry.get("license_needs_acceptance"):
        return None
    return None if is_accepted(entry["id"], entry["license"]) else entry


def require_accepted(name_or_path: str) -> None:
    """Refuse a model whose licence needs acceptance and has not been accepted, saying how to."""
    entry = pending(name_or_path)
    if entry is not None:
        raise UserError(
            f"model {entry['id']} comes under the licence {entry['license']}, which must be accepted before "
            f"first use: read it, then run `brainsegfounder models accept-licence {entry['id']}` (once)"
        )


def accept(model_id: str, licence: str) -> None:
    """Record that ``licence`` was accepted for model ``model_id``."""
    accepted = _accepted()
    accepted[model_id] = {
        "license": licence,
        "accepted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        accepted_file().parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {accepted_file().parent} ({error.strerror}); set BRAINSEGFOUNDER_HOME to a folder "
            "you can write to"
        ) from None
    with atomic_path(accepted_file()) as tmp:
        tmp.write_text(json.dumps(accepted, indent=1) + "\n")


def accept_registry_model(model_id: str) -> dict:
    """Accept the licence of registry model ``model_id`` (the CLI's models accept-licence)."""
    entry = next((e for e in registry_models() if e["id"] == model_id), None)
    if entry is None:
        known = ", ".join(e["id"] for e in registry_models() if e.get("license_needs_acceptance")) or "none"
        raise UserError(f"{model_id!r} is not a registry model; models whose licence needs acceptance: {known}")
    accept(model_id, entry["license"])
    return entry
