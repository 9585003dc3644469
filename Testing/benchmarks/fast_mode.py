"""Choose a model's fast mode from measurements (brainsegfounder.fast_mode) and record it.

Cases, each with its ground truth: the shipped Sample Data case (2 mm, BraTS 2023 names) and a
held-out synthetic case at 1 mm (a seed no shipped model was trained on). The default and each
candidate setting run on both; the table gives per case and region the Dice against the truth,
the Dice against the default's label map, the seconds and the windows, and which candidate is
chosen (the fastest losing at most 0.02 Dice anywhere), or that none is.

    .venv/bin/python Testing/benchmarks/fast_mode.py [--model brats-synthetic-demo] [--write OUT.pt]

``--write`` saves a copy of the model with the choice in its metadata (``meta.fast``); the
shipped demo model's was written so (then its SHA-256 in Resources/models.json updated).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))

from brainsegfounder import fast_mode  # noqa: E402

SAMPLE = ROOT / "Resources" / "SampleData"
SAMPLE_INPUTS = (("flair", "t2f"), ("t1ce", "t1c"), ("t1", "t1n"), ("t2", "t2w"))


def sample_case():
    inputs = [(m, str(SAMPLE / f"BrainSegFounderGlioma-{tag}.nii.gz")) for m, tag in SAMPLE_INPUTS]
    return ("sample case (2 mm)", inputs, str(SAMPLE / "BrainSegFounderGlioma-seg.nii.gz"), "brats2023")


def synthetic_case(folder: Path, seed: int):
    from brainsegfounder.synth.cohort import write_cohort

    write_cohort(folder, kind="brats", n=1, seed=seed, spacing=1.0, folds=1)
    case = next(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("BraTS"))
    inputs = [(m, str(case / f"{case.name}_{m}.nii.gz")) for m in ("flair", "t1ce", "t1", "t2")]
    return (f"synthetic 1 mm (seed {seed})", inputs, str(case / f"{case.name}_seg.nii.gz"), "brats2021")


def write_choice(model: str, fast: dict, out: Path) -> None:
    """The model file again with ``meta.fast`` set; its weights untouched."""
    import torch

    from brainsegfounder.atomic import atomic_path
    from brainsegfounder.checkpoints import read_checkpoint_file
    from brainsegfounder.registry import resolve_model

    payload = read_checkpoint_file(resolve_model(model))
    if payload.get("format") != "brainsegfounder":
        raise SystemExit("only a checkpoint of ours has metadata to record the fast mode in")
    payload["meta"]["fast"] = fast
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brats-synthetic-demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=300, help="seed of the held-out synthetic case")
    parser.add_argument("--write", type=Path, help="save the model with the choice in its metadata here")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting and case; the fastest counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [sample_case(), synthetic_case(Path(tmp) / "synthetic", args.seed)]
        report = fast_mode.measure(
            args.model, cases, args.device, progress=lambda line: print(line, flush=True), repeats=args.repeats
        )
    print(f"\n{args.model}: default and fast-mode candidates ({args.device})")
    seconds = "CPU s" if args.device == "cpu" else "s"  # see fast_mode.measure
    header = f"{'setting':12s} {'windows':>8s} {'precision':>10s} {seconds:>6s} {'speed-up':>8s} {'max cost':>8s}"
    print(header + "  case: Dice TC/WT/ET")
    for row in report["measured"]:
        roi = "x".join(str(r) for r in row["roi_size"])
        print(f"{row['setting']:12s} roi {roi} overlap {row['overlap']} {row['precision']}")
        for name, result in row["cases"].items():
            dice = "/".join(f"{v:.3f}" for v in result["dice"].values())
            agree = "/".join(f"{v:.3f}" for v in row["agreement_dice"][name].values())
            print(
                f"{'':12s} {result['windows']:8d} {result['precision']:>10s} {result['seconds']:6.1f} "
                f"{row['speedup']:8.2f} {row['max_dice_cost']:8.4f}  {name}: {dice} (vs default {agree})"
            )
    chosen = report["chosen"]
    print("\nchosen:", json.dumps(chosen) if chosen else f"none ({report['rule']}: no candidate qualifies)")
    if args.write:
        fast = fast_mode.metadata(report)
        if fast is None:
            raise SystemExit("nothing written: no fast mode qualifies")
        write_choice(args.model, fast, args.write)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
