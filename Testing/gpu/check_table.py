"""The table of Testing/gpu/check.sh: each stage's run, its figures from its log, the goals.

    python Testing/gpu/check_table.py WORK_FOLDER [--dry-run 0|1]

WORK_FOLDER holds status.tsv (stage, exit code, seconds, limit) and one NAME.log per stage.
Prints the table; exits 0 when every stage ran and gave its figures, else 1. The goals are
the GPU's (62M model, BraTS-size case, one GPU); a dry run (CPU, tiny sizes) shows them
unjudged.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

GIB_TO_GB = 2**30 / 1e9
ORDER = ["setup", "gpu-tests", "model", "inference"]  # the table's order, whatever order the stages ended in


@dataclass
class Row:
    stage: str
    what: str
    figure: str
    goal: str = "-"
    verdict: str = "-"


@dataclass
class Goal:
    text: str
    met: Callable[[float], bool]


GOALS = {
    "model_s": Goal("< 0.5 s", lambda v: v < 0.5),
    "files_s": Goal("< 2 s", lambda v: v < 2.0),
    "speed": Goal(">= 5x reference", lambda v: v >= 5.0),
    "gpu_gb": Goal("< 6 GB", lambda v: v < 6.0),
    "pretrain_speed": Goal(">= 1.5x reference", lambda v: v >= 1.5),
}

# inference_speed.py's table: path, windows, model s, GFLOP/s, files s, host GiB, GPU GiB, speed x (vs the
# reference), vs today's default, then the Dice columns
INFERENCE_ROW = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<windows>\d+)\s+(?P<model_s>[\d.]+)\s+(?P<gflops>[\d.]+|nan)\s+(?P<files_s>[\d.]+)\s+"
    r"(?P<host>[\d.]+)\s+(?P<gpu>[\d.]+|-)\s+(?P<speed>[\d.]+)\s+(?P<vs_today>[\d.]+)\s+(?P<vs_ref>[\d./]+|-)\s+"
    r"(?P<vs_truth>[\d./]+)\s*$"
)
# pretrain_throughput.py's table: size, configuration, crops/s, s/step, host GiB, GPU GiB, speed x, GPU mem x
PRETRAIN_ROW = re.compile(
    r"^(?P<size>\S+)\s+(?P<name>reference|ours without checkpointing|ours)\s+(?P<rate>[\d.]+)\s+(?P<step_s>[\d.]+)\s+"
    r"(?P<host>[\d.]+)\s+(?P<gpu>[\d.]+|-)\s+(?P<speed>[\d.]+|-)\s+(?P<mem>[\d.]+|-)\s*$"
)
PRETRAIN_FAILED = re.compile(
    r"^(?P<size>\S+)\s+(?P<name>reference|ours without checkpointing|ours)\s+failed: (?P<why>.*)$"
)
# inference_speed.py --compile's verdict: "<row>: compile 41.2 s (the first run's extra time); pays: ..."
COMPILE_LINE = re.compile(
    r"^ours \+ torch\.compile.*?: compile (?P<compile_s>-?[\d.]+) s [^;]*; (?P<verdict>.*)$", re.M
)
PYTEST_SUMMARY = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s")


class Table:
    def __init__(self, dry: bool):
        self.dry, self.rows, self.broken = dry, [], []

    def add(self, stage: str, what: str, figure: str, goal: Optional[str] = None, value: Optional[float] = None):
        if goal is None:
            self.rows.append(Row(stage, what, figure))
            return
        g = GOALS[goal]
        if self.dry:
            verdict = "not judged (dry run)"
        elif value is None:
            verdict = "fail (no figure)"
        else:
            verdict = "pass" if g.met(value) else "fail"
        self.rows.append(Row(stage, what, figure, g.text, verdict))

    def stage_failed(self, stage: str, why: str):
        self.broken.append(stage)
        self.rows.append(Row(stage, "FAILED", why, "-", "FAILED"))

    def render(self) -> str:
        header = Row("stage", "what", "figure", "goal", "pass/fail")
        rows = [header, *self.rows]
        widths = [max(len(getattr(r, f)) for r in rows) for f in ("stage", "what", "figure", "goal")]
        lines = []
        for i, r in enumerate(rows):
            cells = [getattr(r, f).ljust(w) for f, w in zip(("stage", "what", "figure", "goal"), widths, strict=True)]
            lines.append("  ".join([*cells, r.verdict]).rstrip())
            if i == 0:
                lines.append("-" * len(lines[0]))
        return "\n".join(lines)


def figures(log: str) -> List[str]:
    return [line[len("FIGURE ") :].strip() for line in log.splitlines() if line.startswith("FIGURE ")]


def last_lines(log: str, n: int = 2) -> str:
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-160:] if lines else "no output"


def inference_rows(table: Table, log: str) -> bool:
    rows = {}
    for line in log.splitlines():
        m = INFERENCE_ROW.match(line)
        if m:
            rows[m["name"].strip()] = m.groupdict()
    ref = next((r for n, r in rows.items() if n.startswith("reference")), None)
    default = next((r for n, r in rows.items() if n.startswith("new default")), None)
    if ref is None or default is None:
        return False

    def gib(r):
        return "-" if r["gpu"] == "-" else f"{float(r['gpu']):.2f} GiB"

    table.add(
        "inference",
        f"reference ({ref['windows']} windows): model / files-in to files-out / GPU peak",
        f"{float(ref['model_s']):.2f} s / {float(ref['files_s']):.2f} s / {gib(ref)}",
    )
    table.add(
        "inference",
        "ours (default): model time",
        f"{float(default['model_s']):.2f} s",
        "model_s",
        float(default["model_s"]),
    )
    table.add(
        "inference",
        "ours (default): files-in to files-out",
        f"{float(default['files_s']):.2f} s",
        "files_s",
        float(default["files_s"]),
    )
    table.add(
        "inference",
        "ours (default): speed vs reference, same run",
        f"{float(default['speed']):.2f}x",
        "speed",
        float(default["speed"]),
    )
    gb = None if default["gpu"] == "-" else float(default["gpu"]) * GIB_TO_GB
    table.add("inference", "ours (default): peak GPU memory", "-" if gb is None else f"{gb:.2f} GB", "gpu_gb", gb)
    table.add("inference", "ours (default): Dice vs reference TC/WT/ET", default["vs_ref"])
    for name, r in rows.items():
        if r is ref or r is default:
            continue
        table.add(
            "inference",
            f"{name}: model / files / speed / GPU",
            f"{float(r['model_s']):.2f} s / {float(r['files_s']):.2f} s / {float(r['speed']):.2f}x / {gib(r)}",
        )
    compiled = COMPILE_LINE.search(log)
    table.add(
        "inference",
        "torch.compile / CUDA graphs for the forward",
        (
            f"compile {compiled['compile_s']} s; {compiled['verdict']}"
            + (" (dry run: eager backend)" if table.dry else "")
        )
        if compiled
        else "not run (see the log)",
    )
    return True


def pretrain_rows(table: Table, stage: str, log: str) -> bool:
    rows = {}
    for line in log.splitlines():
        m = PRETRAIN_ROW.match(line)
        if m:
            rows[m["name"]] = m.groupdict()
        f = PRETRAIN_FAILED.match(line)
        if f:
            table.add(stage, f"{f['size']} {f['name']}", f"failed: {f['why'][:120]}")
    if "reference" not in rows or "ours" not in rows:
        return False
    size = rows["ours"]["size"]
    roi = re.search(r"(\d+x\d+x\d+) crops", log)
    for name, r in rows.items():
        gpu = "" if r["gpu"] == "-" else f", GPU {float(r['gpu']):.2f} GiB"
        table.add(stage, f"{size} {name}: crops/s at {roi[1] if roi else '?'}", f"{float(r['rate']):.2f}{gpu}")
    speed = rows["ours"]["speed"]
    value = None if speed == "-" else float(speed)
    table.add(stage, f"{size} ours vs reference loop, crops/s", f"{speed}x", "pretrain_speed", value)
    return True


def build(work: Path, dry: bool) -> Table:
    table = Table(dry)
    status = [line.split("\t") for line in (work / "status.tsv").read_text().splitlines() if line.strip()]
    status.sort(key=lambda row: ORDER.index(row[0]) if row[0] in ORDER else len(ORDER))  # stable: pretrain-* last
    for name, rc, seconds, limit in status:
        log_path = work / f"{name}.log"
        log = log_path.read_text(errors="replace") if log_path.is_file() else ""
        if rc == "skipped":
            table.stage_failed(name, f"not run: {last_lines(log, 1)}")
            continue
        ran = f"ran in {seconds} s (limit {limit} s)"
        if rc in ("124", "137"):
            table.stage_failed(name, f"timed out after {limit} s: {last_lines(log)}")
            continue
        if rc != "0":
            table.stage_failed(name, f"exit code {rc} after {seconds} s: {last_lines(log)}")
            continue
        if name == "gpu-tests":
            summary = next(
                (line.strip(" =") for line in reversed(log.splitlines()) if PYTEST_SUMMARY.search(line)), None
            )
            table.add(name, "pytest -m gpu Testing/gpu/test_gpu.py", summary or "no summary line", None)
            if summary is None:
                table.stage_failed(name, "no pytest summary in its log")
                continue
            if not dry and ("skipped" in summary or "passed" not in summary):  # on a GPU every test runs
                table.stage_failed(name, f"tests skipped on the GPU: {last_lines(log, 3)}")
                continue
        elif name == "inference":
            for figure in figures(log):
                table.add(name, "note", figure)
            if not inference_rows(table, log):
                table.stage_failed(name, f"no reference and default rows in its log: {last_lines(log)}")
                continue
        elif name.startswith("pretrain-"):
            if not pretrain_rows(table, name, log):
                table.stage_failed(name, f"no reference and ours rows in its log: {last_lines(log)}")
                continue
        else:
            for figure in figures(log):
                table.add(
                    name, {"setup": "Python, PyTorch, device", "model": "the benchmark's model"}.get(name, name), figure
                )
        table.add(name, "stage", ran)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--dry-run", default="0", help="1: a dry run (CPU, tiny sizes): goals shown, not judged")
    args = parser.parse_args()
    dry = args.dry_run == "1"
    table = build(args.work, dry)
    title = "GPU check" + (" -- DRY RUN (CPU, tiny sizes; the goals are the GPU's)" if dry else "")
    print(title)
    print(table.render())
    stages = sorted({r.stage for r in table.rows})
    if table.broken:
        print(f"\n{len(table.broken)} stage(s) failed: {', '.join(table.broken)}")
        return 1
    print(f"\nevery stage ran ({', '.join(stages)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
