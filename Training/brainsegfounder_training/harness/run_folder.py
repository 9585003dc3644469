"""The run folder: where a run's recipe, state, metrics, best model and summary live.

Every file in it is written atomically (a temporary file renamed into place), so a run killed
at any moment leaves the previous version of each file whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np

from brainsegfounder.atomic import atomic_path
from brainsegfounder.errors import UserError


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def has_state(self) -> bool:
        return (self.path / "state.pt").is_file()

    def write_text(self, name: str, text: str) -> None:
        with atomic_path(self.path / name, suffix=".tmp") as tmp:
            tmp.write_text(text)

    def write_json(self, name: str, data) -> None:
        self.write_text(name, json.dumps(data, indent=1, default=to_plain) + "\n")


def to_plain(value):
    """``json.dumps`` default: numpy scalars and paths as plain values."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def new_run(recipe: dict, out: Optional[str]) -> RunFolder:
    """The folder of a new run: ``out`` or the recipe's ``output.dir``, which must be empty or absent."""
    run = RunFolder(Path(out or recipe["output"]["dir"]))
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(
            f"{run.path} already holds files; continue that run with --resume {run.path} or give a "
            "new --out folder (nothing there is overwritten)"
        )
    return run


def resume_run(
    folder: str, overrides: Iterable[str], load: Callable, resumable: Sequence[str], command: str
) -> Tuple[dict, RunFolder, bool]:
    """(recipe, run folder, has a state to resume from?) for a run to continue.

    Args:
        folder: the run folder; its recipe.yaml is read again with ``load(path, overrides)``.
        overrides: ``key=value`` overrides given when resuming; only ``resumable`` keys may change.
        command: the command that writes such folders, named in errors.
    """
    run = RunFolder(Path(folder))
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"{run.path} is not a run folder (no recipe.yaml); give the folder a {command} run wrote")
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key not in resumable:
            raise UserError(
                f"{key} cannot change when resuming (only {', '.join(resumable)}); start a new run for other settings"
            )
    return load(str(run / "recipe.yaml"), overrides), run, run.has_state
