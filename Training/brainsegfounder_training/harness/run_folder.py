"""The run folder: where a run's recipe, state, metrics, best model and summary live.

Every file in it is written atomically (a temporary file renamed into place), so a run killed
at any moment leaves the previous version of each file whole. The folder is made only with
the run's first files, once its data and model are known good: a rejected run leaves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from brainsegfounder.atomic import check_writable_folder
from brainsegfounder.errors import UserError
from brainsegfounder.output_files import make_folders

from .writes import append_text, write_failure, write_file

PREVIOUS_KEPT = "its previous version is kept."
# the files a run writes (both kinds of run); none of them may be a folder or a broken link
RUN_FILES = (
    "recipe.yaml",
    "state.pt",
    "best.pt",
    "metrics.jsonl",
    "summary.json",
    "splits.json",
    "init.json",
    "subjects.json",
    "skipped.jsonl",
)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def has_state(self) -> bool:
        return (self.path / "state.pt").is_file()

    @property
    def next_step(self) -> str:
        return f"continue with --resume {self.path}"

    @contextlib.contextmanager
    def file(self, name: str, kept: str = PREVIOUS_KEPT, next_step: Optional[str] = None) -> Iterator[Path]:
        """A temporary that replaces ``name`` when the block ends without an error; a failed write
        says ``kept`` and ``next_step`` (default: resume the run)."""
        with write_file(self.path / name, kept, next_step or self.next_step) as tmp:
            yield tmp

    def write_text(self, name: str, text: str, kept: str = PREVIOUS_KEPT, next_step: Optional[str] = None) -> None:
        with self.file(name, kept, next_step) as tmp:
            tmp.write_text(text)

    def write_json(self, name: str, data, kept: str = PREVIOUS_KEPT, next_step: Optional[str] = None) -> None:
        self.write_text(name, json.dumps(data, indent=1, default=to_plain) + "\n", kept, next_step)

    def read_json(self, name: str, parse: Callable = lambda data: data):
        """A JSON file the run wrote, through ``parse``; one line if it was damaged since (the
        run writes them whole, so only something else can have)."""
        try:
            return parse(json.loads((self.path / name).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{self.path / name} is damaged ({type(error).__name__}: {str(error)[:80]}); this run cannot "
                "continue: start a new run"
            ) from None

    def append_text(self, name: str, text: str, kept: str) -> None:
        append_text(self.path / name, text, kept, self.next_step)

    def write_first(self, files: Dict[str, str]) -> None:
        """The first files of a new run (the folder is absent or empty): all of them, or, when
        one cannot be written, none and no folder, so the same command can simply run again."""
        made = _make_folders(self.path)
        written: List[Path] = []
        try:
            for name, text in files.items():
                with write_file(self.path / name, "nothing was kept.", "run again") as tmp:
                    tmp.write_text(text)
                written.append(self.path / name)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            if made:
                shutil.rmtree(made[0], ignore_errors=True)
                for folder in made[1:]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise


def _make_folders(folder: Path) -> List[Path]:
    """Make ``folder`` and its missing parents; returns those made, innermost first."""
    try:
        return make_folders(folder)
    except OSError as error:
        raise write_failure(folder, error, "nothing was written.", "run again") from None


def to_plain(value):
    """``json.dumps`` default: numpy scalars and paths as plain values."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def folder_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a run folder (a file, a broken link), or None."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file: check_writable_folder says so
        if path.is_symlink():
            return f"{path} is a symbolic link to {path.readlink()}, which does not exist"
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links"
        return f"{path} cannot be reached ({error.strerror})"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    return None


def new_run(recipe: dict, out: Optional[str]) -> RunFolder:
    """The folder of a new run: ``out`` or the recipe's ``output.dir``, which must be empty or absent.
    Nothing is made here (see :meth:`RunFolder.write_first`)."""
    run = RunFolder(Path(out or recipe["output"]["dir"]).expanduser())
    problem = folder_problem(run.path)
    if problem:
        raise UserError(f"{problem}; give a new --out folder for the run")
    try:
        holds_files = run.path.exists() and any(run.path.iterdir())
    except OSError as error:
        raise UserError(f"cannot read the run folder {run.path} ({error.strerror}); give another --out") from None
    if holds_files:
        raise UserError(
            f"{run.path} already holds files; continue that run with --resume {run.path} or give a "
            "new --out folder (nothing there is overwritten)"
        )
    check_writable_folder(run.path, "run")
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
    run = RunFolder(Path(folder).expanduser())
    give = f"give the folder a {command} run wrote"
    problem = folder_problem(run.path) or (None if run.path.exists() else f"{run.path} does not exist")
    if problem:
        raise UserError(f"{problem}; {give}")
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"{run.path} is not a run folder (no recipe.yaml); {give}")
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key not in resumable:
            raise UserError(
                f"{key} cannot change when resuming (only {', '.join(resumable)}); start a new run for other settings"
            )
    try:
        load(str(run / "recipe.yaml"), ())
    except UserError as error:  # e.g. a pretrain run's folder given to finetune
        raise UserError(f"{run.path} is not a {command} run ({run / 'recipe.yaml'}: {error}); {give}") from None
    for name in RUN_FILES:  # a folder or a link loop in a file's place would fail only when written
        path = run / name
        problem = None
        if path.is_symlink() and not path.exists():
            problem = folder_problem(path)
        elif path.exists() and not path.is_file():
            problem = f"{path} is a folder, not a file"
        if problem:
            raise UserError(f"{problem}; this run cannot continue: move it away, or start a new run")
    return load(str(run / "recipe.yaml"), overrides), run, run.has_state
