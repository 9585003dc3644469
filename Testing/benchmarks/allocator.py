"""The memory allocator's cost in CPU training: one fine-tuning of the label-efficiency study's
small size (a tiny network from scratch, 16 steps of one 64^3 crop, one thread, on the study's
synthetic glioma cohort made here) run with glibc's malloc and with tcmalloc preloaded
(brainsegfounder.allocator), side by side. Prints each
run's user and system CPU seconds, page faults and best held-out Dice, and the ratio of CPU time.

    .venv/bin/python Testing/benchmarks/allocator.py [--architecture swinunetr|resenc|pctnet]

Both runs start together (one per core on a 2-core machine), so each has one core to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training")]

from brainsegfounder.allocator import CHOICE, allocator_in, tcmalloc_library, with_fast_allocator  # noqa: E402

PATHS = os.pathsep.join(sys.path[:2])
sys.path.insert(0, str(Path(__file__).parent))

from label_efficiency import command_line  # noqa: E402
from label_efficiency_plan import ARMS, SIZES, finetune_unit, synth_units  # noqa: E402


def study_unit(architecture: str):
    """The study's small-size fine-tuning from scratch of ``architecture`` (all labels, seed 0)
    and the synthetic glioma cohort it trains on."""
    size = SIZES["small"]
    cohort = next(u for u in synth_units(size) if u.key == "data/glioma")
    unit = finetune_unit(size, ARMS[f"scratch-{architecture}"], 1.0, 0)
    return cohort.steps[0].args, unit.steps[0].args


def run_cli(args, tmp: Path, unit: str, env: dict) -> subprocess.Popen:
    env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": PATHS}
    command = [sys.executable, "-m", "brainsegfounder", *command_line(args, tmp, tmp / unit, "cpu")]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="swinunetr", choices=("swinunetr", "resenc", "pctnet"))
    args = parser.parse_args()
    if tcmalloc_library() is None:
        print("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4); nothing to compare")
        return 2
    synth, finetune = study_unit(args.architecture)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if run_cli(synth, tmp, "data/glioma", dict(os.environ)).wait():
            print("making the synthetic cohort failed")
            return 1
        envs = {
            "glibc": with_fast_allocator({**os.environ, CHOICE: "system"}),
            "tcmalloc": with_fast_allocator(dict(os.environ)),
        }
        t0 = time.perf_counter()
        children = {name: run_cli(finetune, tmp, name, env) for name, env in envs.items()}
        rows = {}
        for name, child in children.items():
            _, status, usage = os.wait4(child.pid, 0)
            if os.waitstatus_to_exitcode(status):
                print(f"the {name} run failed (exit {os.waitstatus_to_exitcode(status)})")
                return 1
            best = json.loads((tmp / name / "run" / "summary.json").read_text())["best"]
            rows[name] = (usage.ru_utime, usage.ru_stime, usage.ru_minflt, best["dice"])
        print(
            f"{args.architecture}, 16 steps, one thread per run; both runs took {time.perf_counter() - t0:.0f} s wall"
        )
        print(f"{'allocator':28s} {'user s':>8s} {'system s':>9s} {'CPU s':>7s} {'page faults':>12s}  best Dice")
        for name, (user, system, faults, dice) in rows.items():
            label = allocator_in(envs[name])
            scores = " ".join(f"{k} {v:.4f}" for k, v in dice.items())
            print(f"{label:28s} {user:8.1f} {system:9.1f} {user + system:7.1f} {faults:12d}  {scores}")
        (u0, s0, _, d0), (u1, s1, _, d1) = rows["glibc"], rows["tcmalloc"]
        print(f"CPU time, glibc / tcmalloc: {(u0 + s0) / (u1 + s1):.2f}x; same Dice: {d0 == d1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
