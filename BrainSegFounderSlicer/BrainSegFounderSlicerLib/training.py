"""Corrections and fine-tuning from the panel: save training cases, run ``finetune``, plot it.

Cases go where ``finetune`` reads them (``~/.brainsegfounder/cases`` by default; the folder
layout of :mod:`brainsegfounder.cases`). Fine-tuning runs as a background engine process;
its ``metrics.jsonl`` is read while it grows and drawn as a Slicer plot (table + plot
series + chart nodes, saved with the scene).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import vtk

from brainsegfounder import registry
from brainsegfounder.cases import SavedCase, list_cases, save_case
from brainsegfounder.errors import UserError
from brainsegfounder.geometry import resample_to
from brainsegfounder.modalities import guess_from_text
from brainsegfounder.names import plain_name
from brainsegfounder.progress import read_jsonl

from .results import label_image
from .runner import engine_command
from .volumes import volume_to_image


def default_cases_root() -> Path:
    return registry.home() / "cases"


def case_count(root: os.PathLike) -> int:
    return len(list_cases(root))


def case_id_from(name: str) -> str:
    """A usable case id from a volume name ('BraTS2021_00001_flair' -> 'BraTS2021_00001')."""
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", name) if t]
    if len(tokens) > 1 and guess_from_text(tokens[-1]):
        tokens = tokens[:-1]
    text = "_".join(tokens)[:100] or "case"
    try:
        return plain_name(text, "case id")
    except UserError:  # a name Windows reserves ("CON", "aux"): made usable, not refused
        return f"case_{text}"[:100]


def save_training_case(
    scene,
    assignment: Mapping[str, object],
    segmentation,
    root: os.PathLike,
    case_id: str,
    label_schema: str,
    labels: Mapping[int, str],
    convention: str = "brats2021",
    source_model: Optional[dict] = None,
    author: Optional[str] = None,
    note: str = "",
) -> SavedCase:
    """The inputs (resampled in physical space onto the first one's grid) and the edited
    segmentation on that grid, as the next revision of ``case_id``."""
    if segmentation is None or segmentation.GetSegmentation().GetNumberOfSegments() == 0:
        raise UserError("there is no segmentation to save; run Segment (or draw segments) first")
    modalities = list(assignment)
    reference_node = assignment[modalities[0]]
    reference = volume_to_image(reference_node)
    images = {modalities[0]: reference}
    for modality in modalities[1:]:
        image, _ = resample_to(volume_to_image(assignment[modality]), reference, label=f"input {modality}")
        images[modality] = image
    label = label_image(scene, segmentation, reference_node, labels)
    return save_case(
        root, case_id, images, label, label_schema, convention, source_model=source_model, author=author, note=note
    )


def finetune_command(
    base_model: os.PathLike,
    data: os.PathLike,
    run: os.PathLike,
    register: str,
    epochs: int = 20,
    replay: Optional[os.PathLike] = None,
    device: str = "auto",
    overrides: Mapping[str, object] = (),
) -> List[str]:
    """``brainsegfounder finetune`` on saved cases, registering the best model as a new version."""
    args = [
        "finetune",
        "--base",
        str(base_model),
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        str(int(epochs)),
        "--register",
        register,
        "--device",
        device,
    ]
    if replay:
        args += ["--replay", str(replay)]
    args += [f"{k}={v}" for k, v in dict(overrides).items()]
    return engine_command(*args)


def pretrain_hint(data: os.PathLike) -> str:
    """The offline pretraining command lines for the chosen data (shown to researchers)."""
    return (
        f"brainsegfounder pretrain --config stage2-brats --data {data} --out runs/stage2\n"
        f"torchrun --nproc_per_node=8 -m brainsegfounder pretrain --config stage2-brats --data {data} "
        "--out runs/stage2   # several GPUs"
    )


def epoch_metrics(run: os.PathLike) -> List[Dict[str, float]]:
    """Per epoch: loss and held-out mean Dice (NaN where not measured), from the run's metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for record in read_jsonl(path):
        if record.get("type") != "epoch":
            continue
        rows.append(
            {
                "epoch": float(record["epoch"]),
                "loss": float(record["loss"]) if record.get("loss") is not None else float("nan"),
                "dice": float(record["val_mean_dice"]) if record.get("val_mean_dice") is not None else float("nan"),
            }
        )
    return rows


def update_metrics_plot(scene, run: os.PathLike, name: str = "Fine-tuning"):
    """Create or refresh the loss / Dice plot of a run; returns its chart node."""
    table_node = _node(scene, "vtkMRMLTableNode", f"{name} metrics")
    table = table_node.GetTable()
    rows = epoch_metrics(run)
    columns = []
    for title in ("epoch", "loss", "dice"):
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        for row in rows:
            column.InsertNextValue(row[title])
        columns.append(column)
    table.Initialize()
    for column in columns:
        table.AddColumn(column)
    table_node.Modified()
    chart = _node(scene, "vtkMRMLPlotChartNode", f"{name} chart")
    chart.SetTitle(f"{name}: training loss and held-out Dice")
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss / Dice")
    for column, color in (("loss", (0.85, 0.3, 0.2)), ("dice", (0.2, 0.5, 0.9))):
        series = _node(scene, "vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleCircle)
        series.SetColor(*color)
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def _node(scene, class_name: str, name: str):
    node = scene.GetFirstNode(name, class_name, False, True)
    return node if node is not None else scene.AddNewNodeByClass(class_name, name)
