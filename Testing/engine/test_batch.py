"""Many cases at once: segment-batch over BraTS, BIDS and DICOM study folders or a CSV, one model
load, a failed case logged and skipped, results as CSV and JSON, resumable after a kill."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import SimpleITK as sitk

from brainsegfounder.batch import find_cases, run_batch
from brainsegfounder.errors import UserError
from brainsegfounder.inference import InferenceSettings
from brainsegfounder.synth.cohort import case_files
from brainsegfounder.synth.dicom import write_study

from helpers import ROOT, tree_state

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "BrainSegFounderSlicer"), "PYTHONUNBUFFERED": "1"}
TORCH = InferenceSettings(runtime="torch")  # no exported CPU graph to build for a tiny test model


@pytest.fixture(scope="module")
def cases(tmp_path_factory, brats_root):
    """Two BraTS case folders, a DICOM study, and a BraTS folder missing two contrasts."""
    root = tmp_path_factory.mktemp("batch") / "cases"
    root.mkdir()
    for index in (0, 1):
        folder, _, _ = case_files("brats2021", index)
        shutil.copytree(brats_root / folder, root / folder)
    _, images, _ = case_files("brats2021", 0)
    write_study({m: sitk.ReadImage(str(brats_root / p)) for m, p in images.items()}, root / "patient-dicom", "ge")
    broken = root / "BraTS2021_09999"
    broken.mkdir()
    for modality in ("flair", "t1"):
        shutil.copy(brats_root / images[modality], broken / f"BraTS2021_09999_{modality}.nii.gz")
    return root


def _csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_cases_are_found_in_brats_dicom_bids_and_csv_layouts(tmp_path, cases, brats_root):
    found = {c.case_id: c for c in find_cases(cases)}
    assert set(found) == {"BraTS2021_00001", "BraTS2021_00002", "BraTS2021_09999", "patient-dicom"}
    assert [m for m, _ in found["BraTS2021_00001"].inputs] == ["flair", "t1", "t1ce", "t2"]  # the seg file left out
    assert found["patient-dicom"].source == "dicom"
    assert found["patient-dicom"].study == cases / "patient-dicom"

    _, images, _ = case_files("brats2021", 0)
    bids = tmp_path / "bids"
    names = {"flair": "FLAIR", "t1": "T1w", "t1ce": "ce-gadolinium_T1w", "t2": "T2w"}
    for subject, session in (("sub-01", "ses-1"), ("sub-02", None)):
        anat = bids / subject / (session or "") / "anat"
        anat.mkdir(parents=True)
        prefix = f"{subject}_{session}" if session else subject
        for modality, suffix in names.items():
            shutil.copy(brats_root / images[modality], anat / f"{prefix}_{suffix}.nii.gz")
        shutil.copy(brats_root / images["t1"], anat / f"{prefix}_label-L_desc-T1lesion_mask.nii.gz")
    found = {c.case_id: c for c in find_cases(bids)}
    assert set(found) == {"sub-01_ses-1", "sub-02"}
    assert dict(found["sub-02"].inputs)["t1ce"].endswith("sub-02_ce-gadolinium_T1w.nii.gz")
    assert sorted(dict(found["sub-01_ses-1"].inputs)) == ["flair", "t1", "t1ce", "t2"]

    table = tmp_path / "cases.csv"
    table.write_text(
        "case_id,flair,t1ce,t1,t2,study\n"
        + "a,"
        + ",".join(str(brats_root / images[m]) for m in ("flair", "t1ce", "t1", "t2"))
        + ",\n"
        + f"b,,,,,{os.path.relpath(cases / 'patient-dicom', tmp_path)}\n"
    )
    found = {c.case_id: c for c in find_cases(table)}
    assert dict(found["a"].inputs)["t2"] == str(brats_root / images["t2"])
    assert found["b"].study == cases / "patient-dicom"
    assert found["b"].inputs == []


def test_a_batch_segments_every_case_logs_the_failed_one_and_resumes_without_redoing(tmp_path, cases, brats_model):
    out = tmp_path / "out"
    records = []
    progress = lambda *a: records.append(a)  # noqa: E731
    result = run_batch(cases, out, str(brats_model), settings=TORCH, device="cpu", dicom_seg=True, progress=progress)
    assert (result["cases"], result["ok"], result["failed"], result["skipped"]) == (4, 3, 1, 0)
    rows = {r["case_id"]: r for r in _csv(out / "results.csv")}
    assert {k: r["status"] for k, r in rows.items()} == {
        "BraTS2021_00001": "ok",
        "BraTS2021_00002": "ok",
        "patient-dicom": "ok",
        "BraTS2021_09999": "failed",
    }
    assert rows["BraTS2021_09999"]["error"].startswith("missing input for t1ce, t2")
    assert float(rows["BraTS2021_00001"]["WT_ml"]) > 0
    assert "NCR_ml" in rows["BraTS2021_00001"]
    assert "untrained" in rows["BraTS2021_00001"]["notes"]
    # the same case as files and as a DICOM study gives the same volumes
    assert rows["patient-dicom"]["WT_ml"] == rows["BraTS2021_00001"]["WT_ml"]
    data = json.loads((out / "results.json").read_text())
    assert data["model"] == str(brats_model)
    assert len(data["cases"]) == 4
    assert sorted(p.name for p in (out / "patient-dicom").iterdir() if not p.name.startswith(".")) == [
        "labels.nii.gz",
        "segmentation.dcm",
        "segmentation.seg.nrrd",
        "summary.json",
    ]
    assert not (out / "BraTS2021_09999").exists() or not list((out / "BraTS2021_09999").glob("*.nii.gz"))
    assert "BraTS2021_09999: failed: missing input" in (out / "batch.log").read_text()
    batch = [r for r in records if r[0] == "batch"]
    assert [r[1] for r in batch] == [0, 1, 2, 3, 4]
    assert all(r[2] == 4 for r in batch)
    assert "eta" in batch[1][3]
    assert sum(1 for r in records if r[0] == "load_model" and r[1] == 1) == 1  # one model load

    with pytest.raises(UserError, match=r"holds a batch already \(3 of 4 cases done\); add --resume"):
        run_batch(cases, out, str(brats_model), settings=TORCH, device="cpu")

    finished = {c: tree_state(out / c) for c in ("BraTS2021_00001", "BraTS2021_00002", "patient-dicom")}
    edited = out / "BraTS2021_00002" / "labels.nii.gz"
    edited.write_bytes(edited.read_bytes())  # an annotator's change: not ours any more
    finished["BraTS2021_00002"] = tree_state(out / "BraTS2021_00002")
    result = run_batch(cases, out, str(brats_model), resume=True, settings=TORCH, device="cpu", dicom_seg=True)
    assert (result["skipped"], result["ok"], result["failed"]) == (2, 2, 2)
    assert {c: tree_state(out / c) for c in finished} == finished  # nothing redone, nothing lost
    rows = {r["case_id"]: r for r in _csv(out / "results.csv")}
    assert "already exists (not written by brainsegfounder, or changed since)" in rows["BraTS2021_00002"]["error"]


def test_a_batch_with_another_model_is_not_resumed(tmp_path, cases, brats_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"format": "brainsegfounder-batch", "model": "other.pt", "cases": []}))
    with pytest.raises(UserError, match=r"was segmented with model other\.pt"):
        run_batch(cases, out, str(brats_model), resume=True, settings=TORCH)


def test_a_folder_without_cases_is_one_clear_error(tmp_path, capsys):
    from helpers import one_error_line, run_cli

    (tmp_path / "empty" / "notes").mkdir(parents=True)
    args = ["segment-batch", "--model", "m.pt", "--cases", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]
    code, _, err = run_cli([*args, "--progress", "none"], capsys)
    one_error_line(code, err, r"--cases .*empty holds no cases: expected BraTS case folders")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_killed_batch_resumes_without_redoing_finished_cases(tmp_path, brats_root, brats_model):
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    for index in (0, 1):
        folder, _, _ = case_files("brats2021", index)
        for copy in ("a", "b"):
            shutil.copytree(brats_root / folder, cases_dir / f"{folder}{copy}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "brainsegfounder", "segment-batch", "--model", str(brats_model)]
    command += ["--cases", str(cases_dir), "--out", str(out), "--device", "cpu", "--runtime", "torch"]
    proc = subprocess.Popen(
        [*command, "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    for line in proc.stdout:
        record = json.loads(line)
        if record.get("stage") == "batch" and record["done"] >= 1:
            proc.send_signal(signal.SIGKILL)  # no clean-up at all
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = json.loads((out / "results.json").read_text())
    done = [r["case_id"] for r in before["cases"] if r["status"] == "ok"]
    assert 1 <= len(done) < 4
    kept = {c: tree_state(out / c) for c in done}
    stamps = {c: (out / c / "labels.nii.gz").stat().st_mtime_ns for c in done}

    resumed = subprocess.run(
        [*command, "--resume", "--progress", "json"], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads(resumed.stdout.splitlines()[-1])
    assert final["status"] == "ok"
    assert (final["ok"], final["skipped"]) == (4, len(done))
    assert {c: tree_state(out / c) for c in done} == kept
    assert {c: (out / c / "labels.nii.gz").stat().st_mtime_ns for c in done} == stamps
    rows = _csv(out / "results.csv")
    assert sorted(r["status"] for r in rows) == ["ok"] * 4
    assert not list(out.glob("**/.brainsegfounder/tmp-*"))  # the killed run's temporaries are gone
