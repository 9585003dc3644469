"""``brainsegfounder evaluate``: metrics of a prediction folder, or of a model on a data set.

Writes ``metrics.csv`` (one row per case and region), ``summary.json`` (mean / sd / median
per region and metric), ``boxplots.png``, for a run ``learning_curves.png``, and with a model
``predictions/CASE_ID.nii.gz``.

BraTS label maps are read in ONE convention per data set (ET = 4 in brats2021, 3 in
brats2023): ``--labels``, else the run's recipe, else what the data set says (its layout, its
datalist's ``description.layout``, its saved cases), else its ground truth, which must show one
ET label across the cases (3 in some and 4 in others, or neither anywhere, is refused: a guess
per case once read an empty truth as brats2021 and dropped a prediction's false ET 3, scoring
ET Dice 1). Every prediction must hold only that convention's values.

Everything is checked before the work (arguments, the output folder, existing files, the
data, every prediction's header), each prediction's values as it is scored, and the outputs
are written together at the end (the engine's :class:`OutputFiles`): a rejected, failed or
cancelled evaluation leaves the output folder as it was, and makes none.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from brainsegfounder.atomic import check_writable_folder, disk_full, existing, staging_dir
from brainsegfounder.checkpoints import load_checkpoint, resolve_meta
from brainsegfounder.errors import UserError
from brainsegfounder.geometry import same_grid
from brainsegfounder.imageio import check_image, quiet_itk, write_image
from brainsegfounder.labels import LabelSchema, et_label
from brainsegfounder.labels import schema as label_schema
from brainsegfounder.lesion_metrics import MISSING_HD95_MM
from brainsegfounder.lesion_metrics import challenge as lesion_challenge
from brainsegfounder.networks import PRESETS
from brainsegfounder.output_files import OutputFiles
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress
from brainsegfounder.registry import resolve_model

from ..harness.plots import box_plots, learning_curves
from ..harness.run_folder import folder_problem
from ..harness.writes import write_failure
from .datasets import Case, check_cases, discover
from .initialise import resolve_task
from .metrics import NUMERIC, case_metrics, summarise
from .recipe import load_recipe

PRED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")
# the box plots' metrics, and the terminal table's
SHOWN = ("dice", "hd95_mm", "brats_lesion_dice", "brats_lesion_hd95_mm", "volume_error_ml", "recognition_quality")


def _recipe_convention(run: Optional[Path]) -> str:
    """The run recipe's data.label_convention (auto when no run)."""
    return load_recipe(str(run / "recipe.yaml"))["data"]["label_convention"] if run is not None else "auto"


def _declared_convention(cases: List[Case], schema: LabelSchema, labels: Optional[str], recipe: str):
    """The convention that --labels, the run's recipe or the data set itself names, or None."""
    if schema.name != "brats_regions":
        if labels:
            raise UserError(f"--labels is for BraTS label maps; this task's label schema is {schema.name}: drop it")
        return None
    if labels or recipe != "auto":
        return labels or recipe
    declared = sorted({c.convention for c in cases} - {"auto"})
    if len(declared) > 1:
        raise UserError(
            "the data set's cases declare both brats2021 and brats2023 label conventions; evaluate them "
            "separately, or pass --labels brats2021|brats2023 if one holds for all"
        )
    return declared[0] if declared else None


def _truth_convention(cases: List[Case]) -> str:
    """The convention the ground truth of a data set that does not say shows: one ET label."""
    three = four = None
    for case in cases:
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(case.label))).tolist())
        three = three or (case.case_id if 3 in values else None)
        four = four or (case.case_id if 4 in values else None)
    if three and four:
        raise UserError(
            f"the ground truth mixes BraTS label conventions: enhancing tumour is 3 (brats2023) in case "
            f"{three} and 4 (brats2021) in case {four}; relabel one set, or pass --labels brats2021|brats2023"
        )
    if not three and not four:
        raise UserError(
            "the data set does not say its BraTS label convention and no case's ground truth has "
            "enhancing tumour (3 or 4) to show it; pass --labels brats2021 (ET=4) or --labels brats2023 (ET=3)"
        )
    return "brats2023" if three else "brats2021"


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


def _folder(path: str, what: str, remedy: str) -> Path:
    """An input folder that exists and is one, or one line that says why not."""
    folder = Path(path).expanduser()
    problem = folder_problem(folder) or (None if folder.exists() else f"{folder} does not exist")
    if problem:
        raise UserError(f"{what}: {problem}; {remedy}")
    return folder


def _run_splits(run: Path) -> set:
    """The held-out case ids of a finetune run folder."""
    give = "give the folder of a finetune run"
    path = run / "splits.json"
    if not path.is_file() or not (run / "recipe.yaml").is_file():
        raise UserError(f"--run {run} has no splits.json and recipe.yaml; {give}")
    try:
        return set(json.loads(path.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--run {run}: cannot read its splits.json (damaged?); {give}") from None


def _prediction_path(folder: Path, case_id: str) -> Path:
    for suffix in PRED_SUFFIXES:
        path = folder / f"{case_id}{suffix}"
        if os.path.lexists(path):  # a folder or a broken link of that name is named, not passed over
            check_image(path, f"case {case_id}: prediction")
            return path
    raise UserError(
        f"no prediction for case {case_id} in {folder} (expected {case_id}.nii.gz); "
        "predict every case or evaluate a subset of the data"
    )


def _select(cases: List[Case], wanted: Optional[set]) -> List[Case]:
    if wanted is None:
        return cases
    chosen = [c for c in cases if c.case_id in wanted]
    if not chosen:
        raise UserError("none of the run's validation cases are in this data set; give the run's data")
    return chosen


def _nifti_nonfinite(path: Path) -> bool:
    """Whether a float NIfTI holds NaN/inf: SimpleITK reads them as 0 (measured), so look with nibabel."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib

    image = nib.load(str(path))
    return np.issubdtype(image.get_data_dtype(), np.floating) and not np.isfinite(np.asanyarray(image.dataobj)).all()


def _prediction_values(case: Case, path: Path, values: np.ndarray, schema: LabelSchema, convention: str) -> None:
    """The prediction holds whole label values of the case's schema and convention."""
    where = f"case {case.case_id}: prediction {path}"
    if values.dtype.kind == "f" and _nifti_nonfinite(path):
        values = np.append(values, np.nan)
    fractional = values[~np.isclose(values, np.round(values))] if values.dtype.kind == "f" else values[:0]
    if fractional.size:
        example = fractional[0]
        raise UserError(
            f"{where} holds values that are no whole labels (e.g. {example:g}); give a label map "
            "(threshold a probability map into labels first)"
        )
    allowed = schema.valid_values(convention)
    bad = sorted({int(v) for v in values.tolist()} - set(allowed))
    if bad:
        where_convention = f" ({convention}, ET={max(allowed)})" if schema.name == "brats_regions" else ""
        raise UserError(
            f"{where} holds label values {bad} outside the schema {schema.name}{where_convention}, "
            f"which allows {list(allowed)}; write the labels of the data set's convention"
        )


def _read(path: Path, what: str) -> sitk.Image:
    with quiet_itk():
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as error:
            message = str(error).strip().splitlines()[-1][:120]
            raise UserError(f"{what}: cannot read {path} ({message}); the file is damaged: write it again") from None


def _write_label(image: sitk.Image, path: Path, out: Path) -> None:
    try:
        write_image(image, path)  # read back: ITK's NIfTI writer leaves a short file on a full disk
    except (OSError, RuntimeError) as error:
        reason = "the disk is full" if disk_full(error, path) else getattr(error, "strerror", None) or str(error)
        raise UserError(
            f"cannot write {path.name} in {out} ({reason}); nothing in {out} was changed. Free space and run again"
        ) from None


def evaluate(
    data: str,
    out: str,
    pred: Optional[str] = None,
    model: Optional[str] = None,
    task: Optional[str] = None,
    run: Optional[str] = None,
    device: str = "auto",
    lesion_wise: bool = True,
    labels: Optional[str] = None,
    brats_challenge: Optional[str] = None,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
    overwrite: bool = False,
) -> dict:
    # -- arguments and paths: seconds, before any model or data is read ------------------------
    if bool(pred) == bool(model):
        raise UserError("give either --pred FOLDER (predicted label maps named CASE_ID.nii.gz) or --model MODEL")
    cancel = cancel or CancelToken()
    out_dir = Path(out).expanduser()
    problem = folder_problem(out_dir)
    if problem:
        raise UserError(f"--out: {problem}; give a folder for the results")
    check_writable_folder(out_dir, "evaluation")
    run_dir = _folder(run, "--run", "give the folder of a finetune run") if run else None
    wanted = _run_splits(run_dir) if run_dir is not None else None
    pred_dir = _folder(pred, "--pred", "give the folder of predicted label maps") if pred else None
    if labels is not None:
        et_label(labels)  # one line naming the two conventions
    if brats_challenge is not None:
        lesion_challenge(brats_challenge)
    if model:
        from brainsegfounder.inference import resolve_device

        resolve_device(device)

    # -- the task, the data and the outputs ---------------------------------------------------
    modalities, schema_name = _task_of(model, task, run_dir)
    schema = label_schema(schema_name)
    given = _select(discover(data, modalities), wanted)
    convention = _declared_convention(given, schema, labels, _recipe_convention(run_dir))
    cases = check_cases(given, schema, convention or "auto", progress=progress)
    if schema.name != "brats_regions":
        convention = "brats2021"  # unused: the schema has one numbering
    elif convention is None:  # every file read and each truth checked alone, then the data set as a whole
        convention = _truth_convention(cases)
        cases = [replace(c, convention=convention) for c in cases]
    rules = lesion_challenge(brats_challenge or ("glioma" if schema.name == "brats_regions" else "stroke"))
    brats_hd95 = schema.name == "brats_regions"
    targets: Dict[str, Path] = {name: out_dir / name for name in ("metrics.csv", "summary.json", "boxplots.png")}
    curves = run_dir is not None and (run_dir / "metrics.jsonl").is_file()
    if curves:
        targets["learning_curves.png"] = out_dir / "learning_curves.png"
    if model:
        targets.update({f"prediction {c.case_id}": out_dir / "predictions" / f"{c.case_id}.nii.gz" for c in cases})
    files = OutputFiles(targets, overwrite=overwrite).check()
    predictions = {c.case_id: _prediction_path(pred_dir, c.case_id) for c in cases} if pred_dir else {}
    segmenter = None
    if model:
        from brainsegfounder.segment import Segmenter

        segmenter = Segmenter(model, task=task, device=device)

    # -- the work, into temporaries; committed together at the end ------------------------------
    with staging_dir(existing(out_dir)) as stage:
        rows = []
        for i, case in enumerate(cases):
            cancel.check()
            progress("evaluate", i, len(cases), case.case_id)
            truth = _read(Path(case.label), f"case {case.case_id}: label")
            if segmenter is not None:
                from brainsegfounder.segment import load_inputs

                images, _, _ = load_inputs(dict(case.images))
                predicted, _, _ = segmenter.label_image(images, convention, cancel=cancel)
                path = stage / f"{case.case_id}.nii.gz"
                _write_label(predicted, path, out_dir)
            else:
                path = predictions[case.case_id]
            prediction = _read(path, f"case {case.case_id}: prediction")
            if not same_grid(prediction, truth):
                raise UserError(
                    f"case {case.case_id}: prediction {path.name} is not on the grid of its label "
                    f"(size {prediction.GetSize()} vs {truth.GetSize()}); predict on the label's grid"
                )
            p_array, t_array = sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(truth)
            _prediction_values(case, path, np.unique(p_array), schema, convention)
            spacing = truth.GetSpacing()[::-1]  # the arrays below are (z, y, x)
            p_array = p_array.astype(np.int32) if p_array.dtype.kind == "f" else p_array
            p = schema.labels_to_regions(p_array, convention).astype(bool)
            t = schema.labels_to_regions(t_array, convention).astype(bool)
            scores = case_metrics(p, t, spacing, schema.channels, lesion_wise, rules.name, brats_hd95)
            for region, values in scores.items():
                rows.append({"case_id": case.case_id, "region": region, **{k: round(v, 5) for k, v in values.items()}})
        progress("evaluate", len(cases), len(cases))
        summary = {
            "cases": len(cases),
            "label_schema": schema.name,
            "label_convention": convention if schema.name == "brats_regions" else None,
            "lesion_rules": {
                "challenge": rules.name,
                "dilation": rules.dilation,
                "min_volume_mm3": rules.min_volume_mm3,
                "source": rules.source,
            }
            if lesion_wise
            else None,
            "hd95": f"BraTS's (surface elements; {MISSING_HD95_MM:g} mm with one map empty)"
            if brats_hd95
            else "MONAI's (the volume's diagonal with one map empty)",
            "predictions": str(out_dir / "predictions" if model else pred_dir),
            "model": model,
            "regions": summarise(rows),
        }
        cancel.check()
        shown = [m for m in SHOWN if any(m in r for r in rows)]
        try:
            _write_csv(stage / "metrics.csv", rows)
            (stage / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            box_plots(rows, shown, stage / "boxplots.png")
            if curves:
                learning_curves(run_dir / "metrics.jsonl", stage / "learning_curves.png")
            with files.write() as tmp:
                for what, target in files.targets.items():
                    shutil.move(stage / target.name, tmp[what])
        except (OSError, RuntimeError, UserError) as error:
            raise write_failure(out_dir, error, f"nothing in {out_dir} was changed.", "run again") from None
    return summary


def _write_csv(path: Path, rows: List[dict]) -> None:
    fields = ["case_id", "region"] + [m for m in NUMERIC if any(m in r for r in rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def format_table(summary: dict) -> str:
    """Mean per region of the headline metrics, for the terminal."""
    head = ("Dice", "HD95 mm", "lesion Dice", "lesion HD95", "vol err mL", "recog. Q")
    lines = [f"{'region':8s} " + " ".join(f"{h:>11s}" for h in head)]
    for region, metrics in summary["regions"].items():
        means = [metrics.get(name, {}).get("mean", np.nan) for name in SHOWN]
        lines.append(f"{region:8s} " + " ".join(f"{m:11.{d}f}" for m, d in zip(means, (4, 2, 4, 2, 2, 3), strict=True)))
    return "\n".join(lines)
