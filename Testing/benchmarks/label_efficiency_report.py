"""The label-efficiency study's outputs: results.csv, table.md, dice_vs_fraction.png and report.md,
each written atomically from the finished units' ``done.json`` records."""

from __future__ import annotations

import csv
import io
import json
import shlex
import statistics
from pathlib import Path
from typing import Dict, List

from label_efficiency_plan import ARMS, Size, Unit

from brainsegfounder.atomic import atomic_path

REGIONS = ("TC", "WT", "ET")


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _compute(record: dict) -> dict:
    attempts = record["attempts"]
    return {
        "wall_s": round(sum(a["wall_s"] for a in attempts), 1),
        "cpu_s": round(sum(a["cpu_s"] for a in attempts), 1),
    }


def finetune_rows(run: Path, units: List[Unit]) -> List[dict]:
    """One row per fine-tuning: the test cohort's mean Dice and lesion-wise Dice per region."""
    rows = []
    for unit in units:
        if unit.kind != "finetune":
            continue
        record = json.loads((run / unit.key / "done.json").read_text())
        row = {k: record[k] for k in ("arm", "backbone", "fraction", "seed")}
        row["labelled_cases"] = record["summary"]["train_cases"]
        row["steps"] = record["summary"]["steps"]
        for region in REGIONS:
            scores = record["test"][region]
            row[f"dice_{region}"] = round(scores["dice"]["mean"], 4)
            row[f"lesion_dice_{region}"] = round(scores["brats_lesion_dice"]["mean"], 4)
        row["dice_mean"] = round(statistics.fmean(row[f"dice_{r}"] for r in REGIONS), 4)
        row.update({f"finetune_{k}": v for k, v in _compute(record).items()})
        rows.append(row)
    return rows


def pretraining_cost(run: Path, units: List[Unit]) -> Dict[str, dict]:
    """Per pretraining unit: steps, wall and CPU seconds (stage 2 carries its stage 1's too)."""
    cost = {}
    for unit in units:
        if unit.kind == "pretrain":
            record = json.loads((run / unit.key / "done.json").read_text())
            name = unit.key.split("/", 1)[1]
            cost[name] = {"steps": record["summary"]["steps"], **_compute(record)}
            after = next((n for n in unit.needs if n.startswith("pretrain/")), None)
            if after:
                before = cost[after.split("/", 1)[1]]
                cost[name] = {k: round(cost[name][k] + before[k], 1) for k in cost[name]}
    return cost


def _mean_sd(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def groups(rows: List[dict]) -> Dict[tuple, List[dict]]:
    grouped: Dict[tuple, List[dict]] = {}
    for row in rows:
        grouped.setdefault((row["arm"], row["fraction"]), []).append(row)
    return grouped


def table(rows: List[dict], pretrain: Dict[str, dict]) -> str:
    head = (
        ["initialisation", "labels", "cases", "seeds"]
        + [f"Dice {r}" for r in REGIONS]
        + [f"lesion Dice {r}" for r in REGIONS]
        + ["pretraining steps / CPU s", "fine-tuning CPU s (per run)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (arm, fraction), mine in groups(rows).items():
        p = pretrain.get(ARMS[arm].pretraining or "")
        cells = [
            ARMS[arm].label,
            f"{fraction:.0%}",
            str(mine[0]["labelled_cases"]),
            str(len(mine)),
            *(_mean_sd([r[f"dice_{g}"] for r in mine]) for g in REGIONS),
            *(_mean_sd([r[f"lesion_dice_{g}"] for r in mine]) for g in REGIONS),
            f"{p['steps']} / {p['cpu_s']:.0f}" if p else "-",
            f"{statistics.fmean(r['finetune_cpu_s'] for r in mine):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], out: Path) -> Path:
    """Mean Dice over TC, WT and ET against the label fraction (log axis), one line per arm, the
    band +-1 SD over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_arm: Dict[str, Dict[float, List[float]]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {}).setdefault(row["fraction"], []).append(row["dice_mean"])
    for arm, points in by_arm.items():
        xs = sorted(points)
        means = [statistics.fmean(points[x]) for x in xs]
        sds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        (line,) = ax.plot(xs, means, marker="o", label=ARMS[arm].label)
        low = [m - s for m, s in zip(means, sds, strict=True)]
        high = [m + s for m, s in zip(means, sds, strict=True)]
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    fractions = sorted({r["fraction"] for r in rows})
    ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled share of the fine-tuning cohort")
    ax.set_ylabel("test Dice, mean of TC / WT / ET")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        try:
            fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
    return out


def _commands(run: Path, units: List[Unit]) -> str:
    lines = []
    for unit in units:
        for step in unit.steps:
            args = [a.replace("{run}", "RUN").replace("{unit}", f"RUN/{unit.key}") for a in step.args]
            lines.append("brainsegfounder " + " ".join(shlex.quote(a) for a in args))
    return "\n".join(lines)


def report(run: Path, size: Size, units: List[Unit], args, rows: List[dict], table_text: str) -> str:
    budget = size.finetune
    steps = int(budget["train.epochs"]) * int(budget["train.steps_per_epoch"])
    batch = budget.get("train.batch_size", "the recipe's")
    study = ["python", "Testing/benchmarks/label_efficiency.py", "--size", args.size, "--out", str(args.out)]
    study += ["--arms", ",".join(args.arms), "--fractions", ",".join(f"{f:g}" for f in args.fractions)]
    study += ["--seeds", ",".join(map(str, args.seeds))] + (["--jobs", str(args.jobs)] if args.jobs > 1 else [])
    total_cpu = sum(r["finetune_cpu_s"] for r in rows)
    models = ", ".join(f"{k} {v}" for k, v in size.models.items())
    return f"""# Label-efficiency study ({args.size})

Pretraining cohort: {size.healthy} healthy synthetic subjects (t1, flair); fine-tuning cohort: {size.glioma}
synthetic glioma cases in {size.folds} folds (fold 0 held out for model selection, the label fraction
taken from the rest with the seed); test: {size.test} glioma cases of another seed, never seen. All
drawn from the realistic synthetic world (`synth --world realistic`) at {size.spacing:g} mm; crops
{"x".join(map(str, size.roi))}, models {models}.

**One fine-tuning budget for every arm:** recipe `{size.finetune_config}` with
{" ".join(f"`{k}={v}`" for k, v in budget.items())}: {steps} optimiser steps of {batch} crop(s)
whatever the label fraction, the same learning rate, schedule, loss and augmentations. Each
pretraining runs once (its recipe's seed); the seeds vary the labelled subset, the new decoder's
initial weights and the crops. Scores: the test cohort's mean Dice per region (thresholded
sigmoid, the `segment` path) and BraTS 2023's lesion-wise Dice (glioma rules), per fine-tuning;
the table gives the mean ± SD over seeds. CPU seconds are those of the child processes
(each child's own rusage), of the attempts that finished (a killed attempt's are not counted).

{table_text}
![Dice against label fraction](dice_vs_fraction.png)

{len(rows)} fine-tunings, {total_cpu / 3600:.2f} CPU-hours of fine-tuning and testing.

## Commands

The study (resumable: the same command continues after a kill):

```bash
{" ".join(shlex.quote(a) for a in study)}
```

What it runs, in order (RUN is the run folder; `--progress none` and, but for `synth`, `--device
{args.device}` added; a unit's commands, e.g. a fine-tuning and its test, in one child process
through the CLI's entry point; memory allocator: {args.allocator}):

```bash
{_commands(run, units)}
```
"""


def write_outputs(run: Path, size: Size, units: List[Unit], args) -> List[Path]:
    rows = finetune_rows(run, units)
    pretrain = pretraining_cost(run, units)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    table_text = table(rows, pretrain)
    return [
        _write(run / "results.csv", buffer.getvalue()),
        _write(run / "table.md", table_text),
        plot(rows, run / "dice_vs_fraction.png"),
        _write(run / "report.md", report(run, size, units, args, rows, table_text)),
    ]
