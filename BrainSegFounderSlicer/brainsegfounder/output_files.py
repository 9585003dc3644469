"""The files one run writes: checked before the work, written together after it.

* **Checked first.** No output may be an input (the same file through a link or another
  spelling of its path, or a file inside an input DICOM folder), two outputs may not be one
  file, and an existing file is replaced only if this tool wrote it and nobody changed it since
  (or with ``overwrite``): a file the user made or edited is never lost.
* **All or nothing.** Every output is written to a temporary in its folder's staging area
  (:mod:`.atomic`), and only when all are written are they renamed into place, together: a
  failure (a full disk, a cancel, a crash) leaves every file as it was, and folders are made
  only then, so a rejected run leaves no empty folder.
* **What we wrote** is recorded per folder in ``.brainsegfounder/written.json`` (name, size,
  modification time), which is how a rerun may replace its own results.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .atomic import STATE_DIR, check_writable_folder, existing, fsync_dir, fsync_file, staging_dir, write_error
from .errors import UserError

RECORD = "written.json"
RECORD_FORMAT = "brainsegfounder-written"


def _record_path(folder: Path) -> Path:
    return folder / STATE_DIR / RECORD


def _read_record(folder: Path) -> dict:
    try:
        data = json.loads(_record_path(folder).read_text())
        return dict(data["files"]) if data.get("format") == RECORD_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def written_by_us(path: os.PathLike) -> bool:
    """Whether ``path`` is a file this tool wrote and nobody changed since."""
    path = Path(path)
    entry = _read_record(path.parent).get(path.name)
    return bool(entry) and path.is_file() and _stamp(path) == entry


def _resolve(path: Path, what: str) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop of symbolic links
        raise UserError(f"{what} {path} is a loop of symbolic links; remove the link or choose another name") from None


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        with contextlib.suppress(OSError):
            return a.samefile(b)
    with contextlib.suppress(RuntimeError, OSError):
        return a.resolve() == b.resolve()
    return False


def _ancestor_of(folder: Path, path: Path) -> bool:
    with contextlib.suppress(RuntimeError, OSError):
        return folder.resolve() in path.resolve().parents
    return False


class OutputFiles:
    """``targets`` maps what each output is (for messages, e.g. "--summary") to its path;
    ``inputs`` are the paths (files or DICOM folders) the run reads."""

    def __init__(
        self,
        targets: Mapping[str, Optional[os.PathLike]],
        overwrite: bool = False,
        inputs: Sequence[Tuple[str, os.PathLike]] = (),
    ) -> None:
        self.targets: Dict[str, Path] = {what: Path(p) for what, p in targets.items() if p is not None}
        self.overwrite = overwrite
        self.inputs = [(name, Path(p)) for name, p in inputs]

    def check(self) -> "OutputFiles":
        """Everything that can be known before the work; one :class:`UserError` if not."""
        seen: Dict[Path, str] = {}
        for what, path in self.targets.items():
            key = _resolve(path, what)
            if key in seen:
                raise UserError(f"{what} and {seen[key]} are the same file {path}; give each output its own name")
            seen[key] = what
            if path.is_dir():
                raise UserError(f"{what} {path} is a folder; give a file name")
            for name, source in self.inputs:
                if _same_file(path, source):
                    raise UserError(
                        f"{what} {path} is the input {name}: writing it would destroy the scan; choose another name"
                    )
                if source.is_dir() and _ancestor_of(source, path):
                    raise UserError(
                        f"{what} {path} is inside the input folder of {name} ({source}); write outputs elsewhere"
                    )
            if path.exists() and not (self.overwrite or written_by_us(path)):
                raise UserError(
                    f"{what} {path} already exists (not written by brainsegfounder, or changed since); choose "
                    "another name, or give --overwrite to replace it"
                )
            check_writable_folder(path.parent)
        return self

    @contextlib.contextmanager
    def write(self) -> Iterator[Dict[str, Path]]:
        """Yields ``{what: temporary path}``; when the block ends without an error the
        temporaries replace their targets together; on any error nothing changes."""
        with contextlib.ExitStack() as stack:
            stages: Dict[Path, Path] = {}
            temporaries: Dict[str, Path] = {}
            for what, path in self.targets.items():
                base = existing(path.parent)
                if base not in stages:
                    stages[base] = stack.enter_context(staging_dir(base))
                slot = stages[base] / str(len(temporaries))
                slot.mkdir()
                temporaries[what] = slot / path.name  # the target's own name: writers pick formats by it
            try:
                yield temporaries
                for tmp in temporaries.values():
                    fsync_file(tmp)
            except (OSError, RuntimeError) as error:
                raise write_error(error, next(iter(self.targets.values())).parent) from None
            self._commit(temporaries, stages)

    def _commit(self, temporaries: Dict[str, Path], stages: Dict[Path, Path]) -> None:
        moves: List[Tuple[Path, Path]] = [(temporaries[what], path) for what, path in self.targets.items()]
        moves += self._records(temporaries, stages)
        created: List[Path] = []
        done: List[Tuple[Path, Optional[Path]]] = []
        try:
            for tmp, target in moves:
                created += make_folders(target.parent)
                backup = None
                if target.exists():
                    backup = tmp.with_name(tmp.name + ".previous")
                    try:
                        os.link(target, backup)  # the old file stays in place until replaced
                    except OSError:
                        backup = None
                tmp.replace(target)
                done.append((target, backup))
        except OSError as error:
            for target, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        backup.replace(target)
                    else:
                        target.unlink()
            for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise write_error(error, moves[len(done)][1]) from None
        for folder in {target.parent for _, target in moves}:
            fsync_dir(folder)

    def _records(self, temporaries: Dict[str, Path], stages: Dict[Path, Path]) -> List[Tuple[Path, Path]]:
        """Staged updates of each output folder's record; a rename keeps size and mtime, so the
        temporaries' stamps are the committed files' stamps."""
        by_folder: Dict[Path, Dict[str, dict]] = {}
        for what, path in self.targets.items():
            by_folder.setdefault(path.parent, {})[path.name] = _stamp(temporaries[what])
        moves = []
        for folder, entries in by_folder.items():
            tmp = stages[existing(folder)] / f"record-{len(moves)}.json"
            record = {**_read_record(folder), **entries}
            tmp.write_text(json.dumps({"format": RECORD_FORMAT, "files": record}, indent=1) + "\n")
            moves.append((tmp, _record_path(folder)))
        return moves


def make_folders(folder: os.PathLike) -> List[Path]:
    """Make ``folder`` and its missing parents; returns those made, innermost first. On a failure
    the ones made are removed again and the OSError raised."""
    folder, missing = Path(folder), []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    try:
        for path in reversed(missing):
            path.mkdir()
    except OSError:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return missing
