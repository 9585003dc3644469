"""Many cases at once: ``brainsegfounder segment-batch --cases FOLDER_OR_CSV --out DIR [--resume]``.

Cases come from a folder of BraTS case folders (``CASE/CASE_flair.nii.gz`` ... or the 2023
``-t2f`` names), a BIDS data set (``sub-*/[ses-*/]anat/*_{T1w,T2w,FLAIR}.nii.gz``, ``ce-*`` for
post-contrast), folders of DICOM studies (series identified as in :mod:`.dicom_study`), or a CSV
(``case_id`` and one column per modality, or a ``study`` column), mixed as they come.

The model loads once. Each case is segmented by the one-case pipeline (:func:`.segment.segment_files`,
so whatever that pipeline does for a case a batch does too) into ``DIR/CASE/``; its outputs are
written together, atomically. After each case ``DIR/results.json`` and ``DIR/results.csv``
(volumes, warnings, notes, errors, seconds per case) are rewritten atomically, so a kill leaves
them consistent. A failed case is logged (``DIR/batch.log``, with the traceback for an
unexpected error) and skipped. ``--resume`` continues a killed or cancelled batch: finished
cases whose outputs are still there (and unchanged) are not redone; a case a kill interrupted,
and a failed case, are run again.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .atomic import atomic_path, ensure_writable_dir
from .dicom_study import holds_dicom
from .errors import Cancelled, UserError
from .imageio import IMAGE_SUFFIXES
from .modalities import canonical, guess_from_text
from .output_files import written_by_us
from .progress import CancelToken, ProgressCallback, null_progress

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
LOG = "batch.log"
FORMAT = "brainsegfounder-batch"
# Per case, in DIR/CASE/: the label map, the Slicer segmentation, the summary, a DICOM SEG
# for DICOM cases when asked.
OUTPUTS = {
    "labels": "labels.nii.gz",
    "seg_nrrd": "segmentation.seg.nrrd",
    "summary": "summary.json",
    "dicom_seg": "segmentation.dcm",
    "qc": "qc.png",
}
LABEL_WORDS = ("seg", "label", "labels", "mask", "dseg", "lesion")
BIDS_SUFFIXES = {"t1w": "t1", "t2w": "t2", "flair": "flair"}
CASE_ID_COLUMNS = ("case_id", "case", "id", "subject")


@dataclass
class BatchCase:
    """One case: image files by modality, or a DICOM study folder."""

    case_id: str
    source: str  # brats, bids, dicom, csv
    inputs: List[Tuple[str, str]] = field(default_factory=list)
    study: Optional[Path] = None
    problem: Optional[str] = None  # found but unusable: reported as a failed case


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def _is_label(name: str) -> bool:
    stem = name.lower().split(".")[0]
    tokens = stem.replace("-", "_").split("_")
    return any(t in LABEL_WORDS for t in tokens[-2:])


def _file_case(folder: Path, source: str = "brats") -> Optional[BatchCase]:
    """A folder of one case's image files, named by modality (BraTS 2021 / 2023 style)."""
    case = BatchCase(folder.name, source)
    found: Dict[str, str] = {}
    for path in _image_files(folder):
        if _is_label(path.name):
            continue
        modality = guess_from_text(path.name.split(".")[0])
        if modality is None:
            continue
        if modality in found:
            case.problem = f"two {modality} files in {folder}: {Path(found[modality]).name} and {path.name}"
        found[modality] = str(path)
    if not found:
        return None
    case.inputs = sorted(found.items())
    return case


def _bids_cases(root: Path) -> List[BatchCase]:
    cases = []
    for subject in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir()) or [subject]
        for session in sessions:
            anat = session / "anat"
            if not anat.is_dir():
                continue
            case_id = subject.name if session is subject else f"{subject.name}_{session.name}"
            case = BatchCase(case_id, "bids")
            found: Dict[str, str] = {}
            for path in _image_files(anat):
                entities = path.name.split(".")[0].split("_")
                modality = BIDS_SUFFIXES.get(entities[-1].lower())
                if modality is None:
                    continue
                if modality == "t1" and any(e.startswith("ce-") for e in entities):
                    modality = "t1ce"
                if modality in found:
                    case.problem = f"two {modality} images in {anat}: {Path(found[modality]).name} and {path.name}"
                found[modality] = str(path)
            if found:
                case.inputs = sorted(found.items())
                cases.append(case)
    return cases


def _csv_cases(path: Path) -> List[BatchCase]:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"--cases {path}: cannot read it as CSV ({error}); give a UTF-8 CSV file") from None
    if not rows:
        raise UserError(f"--cases {path} has no rows; give a header (case_id, flair, t1ce, t1, t2 or study) and rows")
    columns = {c.strip().lower(): c for c in rows[0] if c}
    id_column = next((columns[c] for c in CASE_ID_COLUMNS if c in columns), None)
    if id_column is None:
        raise UserError(f"--cases {path}: no case_id column (columns: {', '.join(columns.values())})")
    modality_columns = {columns[c]: canonical(c) or c for c in columns if c not in CASE_ID_COLUMNS and c != "study"}
    cases, seen = [], set()
    for line, row in enumerate(rows, start=2):
        case_id = (row.get(id_column) or "").strip()
        if not case_id:
            raise UserError(f"--cases {path} line {line}: empty case_id")
        if case_id in seen:
            raise UserError(f"--cases {path} line {line}: case {case_id} is listed twice")
        seen.add(case_id)
        case = BatchCase(case_id, "csv")
        study = (row.get(columns.get("study", ""), "") or "").strip()
        if study:
            case.study = (path.parent / study).resolve()
            case.source = "dicom"
        for column, modality in modality_columns.items():
            value = (row.get(column) or "").strip()
            if value:
                case.inputs.append((modality, str((path.parent / value).resolve())))
        cases.append(case)
    return cases


def find_cases(source: os.PathLike, exclude: Sequence[os.PathLike] = ()) -> List[BatchCase]:
    """The cases of a folder or CSV (see the module's docstring); ``exclude`` (the output folder)
    is never taken for a case."""
    from .names import plain_name
    from .paths import check_path

    source = Path(source)
    check_path(source, "--cases", hint="give a folder of cases or a CSV file")
    if not source.is_dir():
        cases = _csv_cases(source)
    else:
        skip = {Path(p).resolve() for p in exclude}
        cases = _bids_cases(source)
        bids = {c.case_id.split("_")[0] for c in cases}
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            if folder.name.startswith(".") or folder.name in bids or folder.resolve() in skip:
                continue
            case = _file_case(folder)
            if case is None and holds_dicom(folder):
                case = BatchCase(folder.name, "dicom", study=folder)
            if case is not None:
                cases.append(case)
    for case in cases:
        try:
            plain_name(case.case_id, "case id")
        except UserError as error:
            raise UserError(f"--cases {source}: {error}") from None
    if not cases:
        raise UserError(
            f"--cases {source} holds no cases: expected BraTS case folders (CASE/CASE_flair.nii.gz ...), "
            "a BIDS data set (sub-*/anat/*_T1w.nii.gz), DICOM study folders, or a CSV file"
        )
    return cases


class Batch:
    """The state of one output folder: results so far, written atomically after each case."""

    def __init__(self, out: Path, model: str, source: str):
        self.out = out
        self.model = model
        self.source = source
        self.results: Dict[str, dict] = {}

    @property
    def json_path(self) -> Path:
        return self.out / RESULTS_JSON

    def load(self, resume: bool) -> None:
        if not self.json_path.exists():
            return
        try:
            data = json.loads(self.json_path.read_text())
            assert data.get("format") == FORMAT
        except (OSError, ValueError, AssertionError):
            raise UserError(
                f"--out {self.out} holds a {RESULTS_JSON} that is not a batch's; choose another --out folder"
            ) from None
        done = sum(1 for r in data.get("cases", []) if r.get("status") == "ok")
        if not resume:
            raise UserError(
                f"--out {self.out} holds a batch already ({done} of {len(data.get('cases', []))} cases done); "
                "add --resume to continue it, or choose another --out folder"
            )
        if data.get("model") != self.model:
            raise UserError(
                f"--out {self.out} was segmented with model {data.get('model')}, not {self.model}; resume "
                "with the same model, or choose another --out folder"
            )
        self.results = {r["case_id"]: r for r in data.get("cases", [])}

    def finished(self, case: BatchCase) -> bool:
        """Done before, and its outputs still there as written."""
        result = self.results.get(case.case_id)
        if not result or result.get("status") != "ok":
            return False
        outputs = [self.out / p for p in result.get("outputs", {}).values()]
        return bool(outputs) and all(written_by_us(p) for p in outputs)

    def record(self, result: dict) -> None:
        self.results[result["case_id"]] = result
        self.save()

    def save(self) -> None:
        cases = list(self.results.values())
        data = {"format": FORMAT, "model": self.model, "cases_from": self.source, "cases": cases}
        with atomic_path(self.json_path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n")
        with atomic_path(self.out / RESULTS_CSV) as tmp:
            tmp.write_text(results_csv(cases))

    def log(self, line: str) -> None:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        with (self.out / LOG).open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {line.rstrip()}\n")


def results_csv(results: Sequence[dict]) -> str:
    """One row per case: status, volumes (mL) of every region any case has, warnings, notes."""
    regions: List[str] = []
    for result in results:
        regions += [k for k in result.get("volumes_ml", {}) if k not in regions]
    header = ["case_id", "status", "source", *[f"{r}_ml" for r in regions], "warnings", "notes", "error", "seconds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in results:
        volumes = r.get("volumes_ml", {})
        writer.writerow(
            [
                r["case_id"],
                r.get("status", ""),
                r.get("source", ""),
                *[volumes.get(k, "") for k in regions],
                " | ".join(r.get("warnings", [])),
                " | ".join(r.get("notes", [])),
                r.get("error", ""),
                r.get("seconds", ""),
            ]
        )
    return buffer.getvalue()


def _case_outputs(case: BatchCase, dicom_seg: bool, qc: bool) -> Dict[str, str]:
    names = {k: f"{case.case_id}/{v}" for k, v in OUTPUTS.items()}
    if not (dicom_seg and case.study is not None):
        names.pop("dicom_seg")
    if not qc:
        names.pop("qc")
    return names


def segment_case(
    segmenter,
    case: BatchCase,
    out: Path,
    labels: str,
    dicom_seg: bool,
    overwrite: bool,
    cancel: CancelToken,
    preprocessing=None,
    qc: bool = False,
) -> dict:
    """One case through the one-case pipeline; returns its result row (raises on failure).
    ``preprocessing`` (model_space.PrepOptions) applies to every case; ``qc`` writes CASE/qc.png."""
    from .segment import segment_files

    if case.problem:
        raise UserError(case.problem)
    inputs: List[Tuple[str, os.PathLike]] = list(case.inputs)
    extra = {}
    if case.study is not None:
        from .dicom_study import read_study, study_inputs

        inputs, extra["study"] = study_inputs(read_study(case.study), segmenter.meta.modalities, given=inputs)
    outputs = _case_outputs(case, dicom_seg, qc)
    summary = segment_files(
        segmenter.meta.name,
        inputs,
        out / outputs["labels"],
        seg_nrrd=out / outputs["seg_nrrd"],
        summary_path=out / outputs["summary"],
        dicom_seg=out / outputs["dicom_seg"] if "dicom_seg" in outputs else None,
        labels=labels,
        segmenter=segmenter,
        cancel=cancel,
        overwrite=overwrite,
        extra_summary={"case_id": case.case_id, **extra},
        preprocessing=preprocessing,
        qc_path=out / outputs["qc"] if qc else None,
    )
    return {
        "outputs": outputs,
        "volumes_ml": {k: v["volume_ml"] for k, v in summary["regions"].items()},
        "warnings": [str(w) for w in summary.get("warnings", [])],
        "notes": [str(n) for n in summary.get("notes", [])],
        "study": extra.get("study", {}).get("chosen"),
    }


def run_batch(
    cases_from: os.PathLike,
    out: os.PathLike,
    model: str,
    resume: bool = False,
    labels: str = "brats2021",
    device: str = "auto",
    task: Optional[str] = None,
    settings=None,
    dicom_seg: bool = False,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
    preprocessing=None,
    qc: bool = False,
) -> dict:
    """Segment every case of ``cases_from`` into ``out``; returns counts and the results path.
    ``preprocessing`` and ``qc`` are segment's (``--no-preprocess``, ``--reference``, ``--qc``)."""
    from .checkpoints import check_checkpoint_file
    from .labels import et_label
    from .registry import resolve_model

    cancel = cancel or CancelToken()
    et_label(labels)
    out = Path(out)
    cases = find_cases(cases_from, exclude=[out])
    batch = Batch(out, str(model), str(Path(cases_from).resolve()))
    batch.load(resume)
    todo = [c for c in cases if not batch.finished(c)]
    skipped = len(cases) - len(todo)
    check_checkpoint_file(resolve_model(model))  # a bad model costs nothing, and no output folder
    ensure_writable_dir(out, "--out")
    progress("load_model", 0, 1, f"{len(cases)} cases, {skipped} done before; loading model")
    from .segment import Segmenter

    segmenter = Segmenter(model, task=task, device=device, settings=settings)
    progress("load_model", 1, 1)
    batch.save()
    failed = 0
    start = time.monotonic()
    progress("batch", 0, len(todo), f"segmenting {len(todo)} case(s) into {out}")
    for i, case in enumerate(todo):
        cancel.check()
        previous = batch.results.get(case.case_id, {}).get("status")
        # A case a kill interrupted may have some outputs renamed into place before the folder's
        # record of them: those are ours to replace. Anything else follows the usual rules, so an
        # output the user edited after it was written is never replaced (the case fails, saying so).
        overwrite = previous == "running"
        batch.record({"case_id": case.case_id, "source": case.source, "status": "running"})
        t0 = time.monotonic()
        try:
            result = {
                "status": "ok",
                **segment_case(segmenter, case, out, labels, dicom_seg, overwrite, cancel, preprocessing, qc),
            }
            message = f"{case.case_id}: ok"
        except Cancelled:
            batch.log(f"{case.case_id}: cancelled")
            raise
        except UserError as error:
            failed += 1
            result = {"status": "failed", "error": str(error)}
            message = f"{case.case_id}: failed: {error}"
        except Exception as error:  # one broken case never stops the batch; the log has the traceback
            failed += 1
            result = {"status": "failed", "error": f"internal error: {type(error).__name__}: {error}"}
            message = f"{case.case_id}: failed: {result['error']} (traceback in {out / LOG})"
            batch.log(f"{case.case_id}: traceback\n{traceback.format_exc()}")
        result.update(case_id=case.case_id, source=case.source, seconds=round(time.monotonic() - t0, 2))
        batch.record(result)
        batch.log(message)
        elapsed = time.monotonic() - start
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        progress("batch", i + 1, len(todo), f"{message} ({i + 1}/{len(todo)}, eta {eta:.0f} s)")
    ok = sum(1 for r in batch.results.values() if r.get("status") == "ok")
    return {
        "output": str(out),
        "cases": len(cases),
        "ok": ok,
        "failed": failed,
        "skipped": skipped,
        "message": (
            f"{ok} of {len(cases)} cases segmented into {out} ({skipped} done before, {failed} failed"
            f"{f': see {out / LOG}' if failed else ''}); volumes in {out / RESULTS_CSV} and {out / RESULTS_JSON}"
        ),
    }
