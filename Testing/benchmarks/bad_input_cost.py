"""What a rejected input costs: time and peak memory of every row of the bad-input table,
against the command that works on the same folder, in one run.

    .venv/bin/python Testing/benchmarks/bad_input_cost.py [--out cost.json]

The folder is a fresh two-case synthetic BraTS cohort at 3 mm and the shipped demo model. The
goal is under 300 MB and 3 s for any rejected input; rows above it are marked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "faults"), str(HERE.parents[1] / "BrainSegFounderSlicer")]

from brainsegfounder.demo import DEMO_MODEL  # noqa: E402
from brainsegfounder.synth.cohort import write_cohort  # noqa: E402

from bad_inputs import GOOD_SEGMENT, ROWS, build_world, fresh_world, run  # noqa: E402

GOAL_MIB, GOAL_S = 300, 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = write_cohort(scratch / "data", kind="brats", n=2, seed=11, spacing=3.0, folds=2)
        template = build_world(scratch / "template" / "w", data, DEMO_MODEL)
        rows = [GOOD_SEGMENT, *ROWS]
        figures = []
        for index, row in enumerate(rows):
            if row.unprivileged and not shutil.which("setpriv"):
                continue
            world = fresh_world(template, scratch / f"run{index}")
            result = run(world, row.argv(), row.unprivileged)
            figures.append(
                {"row": row.id, "exit": result.returncode, "seconds": result.seconds, "peak_mib": result.peak_mib}
            )
            shutil.rmtree(world.parent, ignore_errors=True)
    good = figures[0]
    print(f"{'row':75s} {'exit':>4s} {'s':>6s} {'MiB':>6s} {'time vs good':>12s}")
    for f in figures:
        over = " over the goal" if f is not good and (f["peak_mib"] > GOAL_MIB or f["seconds"] > GOAL_S) else ""
        ratio = f["seconds"] / good["seconds"]
        print(f"{f['row'][:75]:75s} {f['exit']:4d} {f['seconds']:6.2f} {f['peak_mib']:6.0f} {ratio:11.2f}x{over}")
    rejected = figures[1:]
    worst = max(rejected, key=lambda f: f["peak_mib"])
    slowest = max(rejected, key=lambda f: f["seconds"])
    print(f"worst peak of a rejected input: {worst['peak_mib']:.0f} MiB ({worst['row']})")
    print(f"slowest rejection: {slowest['seconds']:.2f} s ({slowest['row']})")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
