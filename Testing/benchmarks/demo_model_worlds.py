"""A model (by default the shipped demo model, trained on the classic synthetic world) on
held-out cases of the classic and of the realistic world: how much harder the realistic world is
for a model that has not seen it. Dice per region (TC, WT, ET) per case, and the mean per world.

    .venv/bin/python Testing/benchmarks/demo_model_worlds.py [--n 5] [--seed 777] [--spacing 2] [--model PATH]

The demo model was trained on seed 100 (Training/README.md); the default seed here is another.
A real scan is scored with ``brainsegfounder evaluate`` (README, "Synthetic cohorts").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from brainsegfounder.demo import DEMO_MODEL, dice_per_region  # noqa: E402
from brainsegfounder.labels import schema  # noqa: E402
from brainsegfounder.segment import segment_files  # noqa: E402
from brainsegfounder.synth.cohort import case_files, write_cohort  # noqa: E402
from brainsegfounder.synth.world import world_named  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--spacing", type=float, default=2.0, help="mm (the demo model's spacing)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="checkpoint (default the demo model)")
    args = parser.parse_args()
    regions = schema("brats_regions")
    with tempfile.TemporaryDirectory() as tmp:
        means = {}
        for name in ("classic", "realistic"):
            data = write_cohort(
                Path(tmp) / name, kind="brats", n=args.n, seed=args.seed, spacing=args.spacing, world=world_named(name)
            )
            rows = []
            for index in range(args.n):
                folder, images, label = case_files("brats2021", index)
                output = Path(tmp) / f"{name}-{folder}.nii.gz"
                inputs = [(m, str(data / p)) for m, p in images.items()]
                segment_files(str(args.model), inputs, output, device=args.device)
                dice = dice_per_region(sitk.ReadImage(str(output)), sitk.ReadImage(str(data / label)), regions)
                rows.append([dice[c] for c in regions.channels])
                print(f"{name:9s} {folder}  " + "  ".join(f"{c} {d:.3f}" for c, d in dice.items()), flush=True)
            means[name] = np.mean(rows, axis=0)
        print(f"\nmean Dice of {args.model.name} over {args.n} cases (seed {args.seed}, {args.spacing:g} mm):")
        for name, mean in means.items():
            print(f"  {name:9s} " + "  ".join(f"{c} {d:.3f}" for c, d in zip(regions.channels, mean, strict=True)))


if __name__ == "__main__":
    main()
