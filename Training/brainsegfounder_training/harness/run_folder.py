"""The run folder: where a run's recipe, state, metrics, best model and summary live.

Every file in it is written atomically (a temporary file renamed into place), so a run killed
at any moment leaves the previous version of each file whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

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


def prepare_run(
    recipe: Optional[dict],
    out: Optional[str],
    resume: Optional[str],
    overrides: Iterable[str] = (),
    load=None,
    resumable: Sequence[str] = (),
    command: str = "finetune",
) -> Tuple[dict, RunFolder, bool]:
    """(recipe, run folder, resuming?) for a new run or a resumed one.

    Args:
        recipe: the loaded recipe of a new run (unused when resuming).
        out: the new run's folder (default the recipe's ``output.dir``); it must be empty.
        resume: the folder of a run to continue; its recipe.yaml is read again with ``load``.
        overrides: ``key=value`` overrides given when resuming; only ``resumable`` keys may change.
        command: the command that writes such folders, named in errors.
    """
    if resume:
        run = RunFolder(Path(resume))
        if not (run / "recipe.yaml").is_file():
            raise UserError(f"{run.path} is not a run folder (no recipe.yaml); give the folder a {command} run wrote")
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key not in resumable:
                raise UserError(
                    f"{key} cannot change when resuming (only {', '.join(resumable)}); "
                    "start a new run for other settings"
                )
        return load(str(run / "recipe.yaml"), overrides), run, run.has_state
    run = RunFolder(Path(out or recipe["output"]["dir"]))
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(
            f"{run.path} already holds files; continue that run with --resume {run.path} or give a "
            "new --out folder (nothing there is overwritten)"
        )
    return recipe, run, False
