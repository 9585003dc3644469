"""Saving and reading what a run keeps: its resumable state and its best model.

A full disk, or any other failed write, is one clear error that says what was kept (the
previous file stays whole) and how to continue.
"""

from __future__ import annotations

import errno
from pathlib import Path

from brainsegfounder.atomic import atomic_path
from brainsegfounder.checkpoints import read_checkpoint_file, save_checkpoint
from brainsegfounder.errors import UserError


def _write_error(path: Path, error: OSError, kept: str) -> UserError:
    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return UserError(f"cannot write {path} ({reason}); {kept} Free space and continue with --resume {path.parent}")


def save_state(payload: dict, path: Path, kept: str) -> None:
    """``torch.save`` atomically; ``kept`` says what survives a failed write (one sentence)."""
    import torch

    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            torch.save(payload, tmp)
    except OSError as error:
        raise _write_error(path, error, kept) from None


def load_state(path: Path, state_format: str, command: str) -> dict:
    """A state written by ``save_state`` with ``{"format": state_format, ...}`` (weights only)."""
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise UserError(f"{path} is not a training state written by brainsegfounder {command}")
    return state


def save_best_model(path: Path, model, meta, dtype=None) -> None:
    """The self-describing best model (the engine's checkpoint format), atomically."""
    try:
        save_checkpoint(path, model, meta, dtype=dtype)
    except OSError as error:
        raise _write_error(path, error, "the previous best model is kept.") from None
