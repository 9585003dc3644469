"""Does pretraining pay? The label-efficiency study, from one command.

Pretrains each initialisation on a healthy synthetic cohort (BrainSegFounder's three tasks, its
second stage on the fine-tuning cohort's own images, Volume Fusion, the Swin MAE, the 3D MAE),
fine-tunes every arm (and scratch per backbone) on 5/10/25/100% of a labelled glioma cohort with
three seeds and one shared budget, and scores each on a fixed held-out test cohort. Every unit of
work is a ``brainsegfounder`` command run as a child process (synth, pretrain, finetune,
evaluate), so the study measures the product. Output, in one run folder:

    results.csv       one row per fine-tuning (Dice and BraTS lesion-wise Dice per region, compute)
    table.md          mean and SD over seeds per arm and label fraction, compute spent
    dice_vs_fraction.png   mean Dice against the label fraction, one line per arm, +-1 SD bands
    report.md         the budget, the table, the plot, the exact commands

Killed at any moment, the same command continues: finished units are kept (their ``done.json``),
an interrupted training run continues from its last state, anything else restarts.

    python Testing/benchmarks/label_efficiency.py --size small --out runs/label-efficiency
    python Testing/benchmarks/label_efficiency.py --size real --estimate     # GPU-hours, runs nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training"), str(Path(__file__).parent)]

from label_efficiency_plan import ARMS, FRACTIONS, SEEDS, SIZES, Unit, plan  # noqa: E402

from brainsegfounder.allocator import allocator_in, with_fast_allocator  # noqa: E402 (after the path)
from brainsegfounder.atomic import atomic_path  # noqa: E402
from brainsegfounder.cpu_runtimes import SITE_DEFAULT_VARIABLE as CPU_RUNTIME  # noqa: E402
from brainsegfounder.errors import UserError  # noqa: E402
from brainsegfounder.resources import usable_cpus  # noqa: E402

# the children train on the CPU: tcmalloc, when installed, spares them glibc's page faults
ENV = with_fast_allocator(
    {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training"), os.environ.get("PYTHONPATH", "")]
        ),
    }
)


def say(line: str) -> None:
    """A line of progress in one write: units running side by side do not interleave their lines."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def command_line(args, run: Path, unit: Path, device: str) -> list:
    filled = [a.replace("{run}", str(run)).replace("{unit}", str(unit)) for a in args]
    extra = [] if args[0] == "synth" else ["--device", device]
    return [*filled, "--progress", "none", *extra]


# A unit's commands run one after the other in one child process, through the CLI's own entry
# point: each ``python -m brainsegfounder`` start costs ~5 CPU-s of imports (measured here), as
# much as a tiny fine-tuning's steps, and a study at the small size runs 96 fine-tunings.
RUNNER = """
import json, sys
from brainsegfounder.cli import main
for command in json.loads(sys.argv[1]):
    print("$ brainsegfounder " + " ".join(command), flush=True)
    code = main(command)
    if code:
        sys.exit(code)
"""


def run_commands(commands: list, log: Path, threads: Optional[int] = None) -> dict:
    """``brainsegfounder COMMAND`` for each command, in a child process whose output is appended to
    ``log`` (``threads``: its PyTorch threads, else its own default): its wall and CPU seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = ENV if threads is None else {**ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with log.open("a") as out:
        child = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(commands)], env=env, stdout=out, stderr=out)
        # this child's own CPU time: getrusage(RUSAGE_CHILDREN) would mix in the units running beside it
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise UserError(f"a brainsegfounder command failed (exit {code}): {tail[0]} (log: {log})")
    names = "+".join(c[0] for c in commands)
    cpu_s = usage.ru_utime + usage.ru_stime
    return {"commands": names, "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_s, 1)}


def write_stage2_datalist(cohort: Path) -> None:
    """BrainSegFounder's stage 2 reads the target cohort's training images (labels unused): every
    fold but the validation fold 0; the test cohort is another folder altogether."""
    datalist = json.loads((cohort / "datalist.json").read_text())
    training = [{"image": e["image"]} for e in datalist["training"] if e.get("fold") != 0]
    write_json(cohort / "stage2.json", {"description": datalist["description"], "training": training})


def run_unit(unit: Unit, run: Path, device: str, keep_models: bool, threads: Optional[int] = None) -> None:
    folder = run / unit.key
    log = run / "logs" / (unit.key.replace("/", "--") + ".log")
    commands = []
    for step in unit.steps:
        if (folder / step.done).exists():
            continue
        if step.state and (folder / step.state).exists():
            args = step.resume
        else:
            shutil.rmtree(folder / step.out, ignore_errors=True)  # a start that never saved: start over
            args = step.args
        commands.append(command_line(args, run, folder, device))
    attempt = {"commands": "", "wall_s": 0.0, "cpu_s": 0.0}  # killed after its last step: nothing to redo
    if commands:
        say(f"  {unit.key}: {' + '.join(c[0] for c in commands)}")
        attempt = run_commands(commands, log, threads)
    record = {"key": unit.key, "kind": unit.kind, **unit.info, "attempts": [attempt], "plan": plan_of(unit)}
    if unit.key == "data/glioma":
        write_stage2_datalist(folder)
    if unit.kind == "pretrain":
        record["summary"] = json.loads((folder / "summary.json").read_text())
    if unit.kind == "finetune":
        record["summary"] = json.loads((folder / "run" / "summary.json").read_text())
        record["test"] = json.loads((folder / "test" / "summary.json").read_text())["regions"]
        if not keep_models:  # a tiny model is MBs, a real one 250 MB x 96 runs: the scores are kept
            for name in ("best.pt", "state.pt"):
                (folder / "run" / name).unlink(missing_ok=True)
    write_json(folder / "done.json", record)


def plan_of(unit: Unit) -> list:
    return [step.args for step in unit.steps]


def kept_units(units: List[Unit], run: Path) -> set:
    """The units done before that stand: made by the same commands as now, from units that stand
    (a study's code or an earlier unit changed since: the unit is made again)."""
    kept = set()
    for i, unit in enumerate(units, 1):
        done = run / unit.key / "done.json"
        if not done.exists():
            continue
        if json.loads(done.read_text()).get("plan") == plan_of(unit) and all(n in kept for n in unit.needs):
            say(f"[{i}/{len(units)}] {unit.key}: done before, kept")
            kept.add(unit.key)
        else:
            say(f"[{i}/{len(units)}] {unit.key}: done before by other commands or from other inputs, made again")
            shutil.rmtree(run / unit.key)
    return kept


def run_units(units: List[Unit], run: Path, args) -> None:
    """Every unit not done before, up to ``args.jobs`` at once, each started once the units it needs
    are done. A failure lets the running units finish (their work is kept), starts no more, and is
    raised."""
    done = kept_units(units, run)
    say(f"children's memory allocator: {args.allocator}")
    waiting = [(i, u) for i, u in enumerate(units, 1) if u.key not in done]
    threads = None if args.jobs == 1 else max(1, usable_cpus() // args.jobs)
    failure = None
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        running = {}
        while waiting or running:
            while failure is None and len(running) < args.jobs:
                ready = next(((i, u) for i, u in waiting if all(n in done for n in u.needs)), None)
                if ready is None:
                    break
                waiting.remove(ready)
                i, unit = ready
                say(f"[{i}/{len(units)}] {unit.key}")
                running[pool.submit(run_unit, unit, run, args.device, args.keep_models, threads)] = unit
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = running.pop(future)
                try:
                    future.result()
                    done.add(unit.key)
                except UserError as error:
                    failure = failure or error
    if failure is not None:
        raise failure


def parse_list(text: str, allowed, what: str, cast=str) -> list:
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} must be a comma-separated list") from None
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad or not values:
        choices = ", ".join(map(str, allowed)) if allowed is not None else "whole numbers"
        raise UserError(f"--{what}: {', '.join(map(str, bad)) or 'nothing given'}; choose from {choices}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", help="run folder (default runs/label-efficiency-SIZE)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="units run side by side, each with the usable CPUs / JOBS PyTorch threads (default 1; on a "
        "small CPU 2 keeps both cores busier than one unit with two threads)",
    )
    parser.add_argument("--keep-models", action="store_true", help="keep each fine-tuned best.pt")
    parser.add_argument("--estimate", action="store_true", help="print the plan and its cost; run nothing")
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=150.0,
        help="--estimate: sustained TFLOP/s assumed for training (default 150: about 15%% of an "
        "H100/H200's dense bf16 peak, a guess for 3D networks, not a measurement)",
    )
    args = parser.parse_args(argv)
    args.arms = parse_list(args.arms, list(ARMS), "arms")
    args.fractions = parse_list(args.fractions, None, "fractions", float)
    if any(not 0 < f <= 1 for f in args.fractions):
        raise UserError(f"--fractions {args.fractions}: each must be in (0, 1]")
    args.seeds = parse_list(args.seeds, None, "seeds", int)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    args.out = Path(args.out or f"runs/label-efficiency-{args.size}")
    args.allocator = f"{allocator_in(ENV)}, CPU inference runtime {ENV.get(CPU_RUNTIME, 'auto')}"
    return args


def settings_of(args) -> dict:
    return {"size": args.size, "arms": args.arms, "fractions": args.fractions, "seeds": args.seeds}


def start_or_continue(run: Path, settings: dict) -> None:
    """The run folder's study.json: its size, fixed at the first start (another size is refused
    before anything is written), and the arms, fractions and seeds of the latest start: a study
    continues with more (or fewer) of them, its finished units kept."""
    saved = run / "study.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before.get("size") != settings["size"]:
            raise UserError(
                f"{run} holds another study (--size {before.get('size')}); continue it with that size, or give "
                "another --out"
            )
    elif run.exists() and any(run.iterdir()):
        raise UserError(f"{run} is not empty and holds no study; give another --out")
    write_json(saved, settings)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        size = SIZES[args.size]
        units = plan(size, args.arms, args.fractions, args.seeds)
        if args.estimate:
            from label_efficiency_cost import print_estimate

            print_estimate(args, size, units)
            return 0
        run = args.out.resolve()
        start_or_continue(run, settings_of(args))
        from label_efficiency_report import write_outputs

        run_units(units, run, args)
        written = write_outputs(run, size, units, args)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
