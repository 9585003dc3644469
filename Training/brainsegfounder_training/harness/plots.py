"""PNG plots: learning curves of a run, and per-region box plots of an evaluation.

Each writes the path it is given; callers give a temporary they commit (harness.writes), so
a plot is one more file of an all-or-nothing set."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from brainsegfounder.progress import read_jsonl


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out


def learning_curves(metrics_path: Path, out: Path) -> Path:
    """Training loss per step and held-out Dice per region per epoch."""
    plt = _pyplot()
    records = read_jsonl(metrics_path)
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch" and r.get("val_dice")]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, color="0.3")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    regions = list(epochs[0]["val_dice"]) if epochs else []
    for name in regions:
        ax_dice.plot([r["epoch"] for r in epochs], [r["val_dice"][name] for r in epochs], marker="o", ms=3, label=name)
    if epochs:
        ax_dice.plot([r["epoch"] for r in epochs], [r["val_mean_dice"] for r in epochs], "k--", lw=1, label="mean")
        ax_dice.legend(fontsize=8)
    ax_dice.set(xlabel="epoch", ylabel="Dice (held-out, thresholded)", title="validation", ylim=(0, 1))
    return _save(plt, fig, out)


def box_plots(rows: Sequence[dict], metrics: Sequence[str], out: Path) -> Path:
    """One panel per metric, one box per region, over the cases of an evaluation."""
    plt = _pyplot()
    regions = list(dict.fromkeys(r["region"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = [[r[metric] for r in rows if r["region"] == g and r.get(metric) is not None] for g in regions]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(regions) + 1), regions)
        ax.set_title(metric)
    return _save(plt, fig, out)


PRETEXT_LOSSES = ("loss", "rotation", "contrastive", "reconstruction", "mae", "fusion")


def pretraining_curves(metrics_path: Path, out: Path) -> Path:
    """Each pretext loss per logged step, and the validation losses (reconstruction picks the best)."""
    plt = _pyplot()
    records = read_jsonl(metrics_path)
    steps = [r for r in records if r.get("type") == "step"]
    vals = [r for r in records if r.get("type") == "validation"]
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for name in (n for n in PRETEXT_LOSSES if steps and n in steps[0]):  # the run's task's losses
        ax_train.plot([r["step"] for r in steps], [r[name] for r in steps], lw=0.8, label=name)
        if vals:
            ax_val.plot([r["step"] for r in vals], [r[f"val_{name}"] for r in vals], marker="o", ms=3, label=name)
    ax_train.set(xlabel="step", ylabel="loss", title="training (weighted sum and each task)")
    ax_val.set(xlabel="step", ylabel="loss", title="validation (fixed crops)")
    for ax in (ax_train, ax_val):
        ax.legend(fontsize=8)
    return _save(plt, fig, out)
