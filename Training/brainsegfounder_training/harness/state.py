"""Saving and reading what a run keeps: its resumable state and its best model.

A full disk, or any other failed write, is one clear error that says what was kept (the
previous file stays whole) and how to continue.
"""

from __future__ import annotations

from pathlib import Path

from brainsegfounder.checkpoints import checkpoint_payload, read_checkpoint_file
from brainsegfounder.errors import UserError

from .writes import write_file


def save_state(payload: dict, path: Path, kept: str) -> None:
    """``torch.save`` atomically; ``kept`` says what survives a failed write (one sentence)."""
    import torch

    with write_file(path, kept, f"continue with --resume {path.parent}") as tmp:
        torch.save(payload, tmp)


def load_state(path: Path, state_format: str, command: str) -> dict:
    """A state written by ``save_state`` with ``{"format": state_format, ...}`` (weights only)."""
    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise UserError(f"{path} is not a training state written by brainsegfounder {command}")
    return state


def save_best_model(path: Path, model, meta, dtype=None) -> None:
    """The self-describing best model (the engine's checkpoint format), atomically."""
    import torch

    with write_file(path, "the previous best model is kept.", f"continue with --resume {path.parent}") as tmp:
        torch.save(checkpoint_payload(model, meta, dtype), tmp)
