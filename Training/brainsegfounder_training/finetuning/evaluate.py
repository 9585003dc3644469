"""``brainsegfounder evaluate``: metrics of a prediction folder, or of a model on a data set.

Writes ``metrics.csv`` (one row per case and region), ``summary.json`` (mean / sd / median
per region and metric), ``boxplots.png`` and, for a run, ``learning_curves.png``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from brainsegfounder.atomic import atomic_path, ensure_writable_dir
from brainsegfounder.checkpoints import load_checkpoint, resolve_meta
from brainsegfounder.errors import UserError
from brainsegfounder.geometry import same_grid
from brainsegfounder.labels import schema as label_schema
from brainsegfounder.networks import PRESETS
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress
from brainsegfounder.registry import resolve_model

from ..harness.plots import box_plots, learning_curves
from .datasets import Case, check_cases, discover
from .initialise import resolve_task
from .metrics import NUMERIC, case_metrics, summarise
from .recipe import load_recipe

PRED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")


def _task_of(model: Optional[str], task: Optional[str], run: Optional[Path]):
    """(modalities, label schema name) from the model, the run's recipe, or a task preset."""
    if model:
        meta = resolve_meta(load_checkpoint(resolve_model(model)), task)
        return meta.modalities, meta.label_schema
    if run is not None:
        spec = resolve_task(load_recipe(str(run / "recipe.yaml")))
        return spec.modalities, spec.label_schema
    preset = PRESETS.get(task or "brats")
    if preset is None:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(PRESETS)}")
    return preset.modalities, preset.label_schema


def _prediction_path(folder: Path, case_id: str) -> Path:
    for suffix in PRED_SUFFIXES:
        path = folder / f"{case_id}{suffix}"
        if path.is_file():
            return path
    raise UserError(
        f"no prediction for case {case_id} in {folder} (expected {case_id}.nii.gz); "
        "predict every case or evaluate a subset of the data"
    )


def _select(cases: List[Case], run: Optional[Path]) -> List[Case]:
    if run is None:
        return cases
    path = run / "splits.json"
    if not path.is_file():
        raise UserError(f"{run} has no splits.json; give the folder of a finetune run")
    wanted = set(json.loads(path.read_text())["val"])
    chosen = [c for c in cases if c.case_id in wanted]
    if not chosen:
        raise UserError("none of the run's validation cases are in this data set; give the run's data")
    return chosen


def evaluate(
    data: str,
    out: str,
    pred: Optional[str] = None,
    model: Optional[str] = None,
    task: Optional[str] = None,
    run: Optional[str] = None,
    device: str = "auto",
    lesion_wise: bool = True,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
) -> dict:
    if bool(pred) == bool(model):
        raise UserError("give either --pred FOLDER (predicted label maps named CASE_ID.nii.gz) or --model MODEL")
    cancel = cancel or CancelToken()
    run_dir = Path(run) if run else None
    modalities, schema_name = _task_of(model, task, run_dir)
    schema = label_schema(schema_name)
    out_dir = ensure_writable_dir(out)
    cases = check_cases(_select(discover(data, modalities), run_dir), schema, progress=progress)
    segmenter = None
    if model:
        from brainsegfounder.segment import Segmenter

        segmenter = Segmenter(model, task=task, device=device)
        pred_dir = ensure_writable_dir(out_dir / "predictions")
    else:
        pred_dir = Path(pred)
        if not pred_dir.is_dir():
            raise UserError(f"prediction folder {pred_dir} does not exist")
    rows = []
    for i, case in enumerate(cases):
        cancel.check()
        progress("evaluate", i, len(cases), case.case_id)
        if segmenter is not None:
            from brainsegfounder.segment import segment_files

            path = pred_dir / f"{case.case_id}.nii.gz"
            segment_files(
                model, list(case.images.items()), path, labels=case.convention, segmenter=segmenter, cancel=cancel
            )
        else:
            path = _prediction_path(pred_dir, case.case_id)
        prediction, truth = sitk.ReadImage(str(path)), sitk.ReadImage(case.label)
        if not same_grid(prediction, truth):
            raise UserError(
                f"case {case.case_id}: prediction {path.name} is not on the grid of its label "
                f"(size {prediction.GetSize()} vs {truth.GetSize()}); predict on the label's grid"
            )
        spacing = truth.GetSpacing()[::-1]  # the arrays below are (z, y, x)
        p = schema.labels_to_regions(sitk.GetArrayFromImage(prediction), case.convention).astype(bool)
        t = schema.labels_to_regions(sitk.GetArrayFromImage(truth), case.convention).astype(bool)
        for region, values in case_metrics(p, t, spacing, schema.channels, lesions=lesion_wise).items():
            rows.append({"case_id": case.case_id, "region": region, **{k: round(v, 5) for k, v in values.items()}})
    progress("evaluate", len(cases), len(cases))
    summary = {
        "cases": len(cases),
        "label_schema": schema.name,
        "predictions": str(pred_dir),
        "model": model,
        "regions": summarise(rows),
    }
    _write_csv(out_dir / "metrics.csv", rows)
    with atomic_path(out_dir / "summary.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")

    shown = [m for m in ("dice", "hd95_mm", "volume_error_ml", "lesion_f1") if any(m in r for r in rows)]
    box_plots(rows, shown, out_dir / "boxplots.png")
    if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        learning_curves(run_dir / "metrics.jsonl", out_dir / "learning_curves.png")
    return summary


def _write_csv(path: Path, rows: List[dict]) -> None:
    fields = ["case_id", "region"] + [m for m in NUMERIC if any(m in r for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())


def format_table(summary: dict) -> str:
    """Mean per region of the headline metrics, for the terminal."""
    lines = [f"{'region':8s} {'Dice':>7s} {'HD95 mm':>8s} {'vol err mL':>10s} {'lesion F1':>9s}"]
    for region, metrics in summary["regions"].items():
        mean = {
            name: metrics.get(name, {}).get("mean", np.nan)
            for name in ("dice", "hd95_mm", "volume_error_ml", "lesion_f1")
        }
        lines.append(
            f"{region:8s} {mean['dice']:7.4f} {mean['hd95_mm']:8.2f} {mean['volume_error_ml']:10.2f} "
            f"{mean['lesion_f1']:9.3f}"
        )
    return "\n".join(lines)
