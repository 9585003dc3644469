"""Rename a trained checkpoint of ours for shipping: its metadata's name and description set,
its weights untouched, written atomically to a new file (the input is never changed).

    .venv/bin/python scripts/model_meta.py runs/demo-realistic/best.pt \
        Resources/Models/brats-synthetic-realistic.pt --name brats-synthetic-realistic \
        --description "..."

A fine-tuning run names its model after the recipe and describes it generically; a model that
ships in Resources/ is listed under its registry id (Resources/models.json), and the engine
shows the checkpoint's own name and description with each result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "BrainSegFounderSlicer"))

from brainsegfounder.atomic import atomic_path
from brainsegfounder.checkpoints import read_checkpoint_file
from brainsegfounder.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", required=True)
    args = parser.parse_args(argv)
    try:
        import torch

        if args.target.exists():
            raise UserError(f"{args.target} exists; give a new file name")
        if not args.target.parent.is_dir():
            raise UserError(f"no folder {args.target.parent}; create it or give another target")
        payload = read_checkpoint_file(args.source)
        if payload.get("format") != "brainsegfounder":
            raise UserError(f"{args.source} is not a checkpoint of ours (no metadata to rename)")
        payload["meta"].update(name=args.name, description=args.description)
        with atomic_path(args.target) as tmp:
            torch.save(payload, tmp)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
