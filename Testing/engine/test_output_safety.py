"""Outputs never destroy what a user has: no output is an input, an existing file is replaced
only if a run wrote it (or with --overwrite), and the files of a run are written all or nothing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import SimpleITK as sitk
import slicerio

import brainsegfounder.preview
from brainsegfounder.atomic import STATE_DIR

from helpers import one_error_line, run_cli, segment_args, small_disk, tree_state, write_dicom_series

pytestmark = pytest.mark.usefixtures("home")


def all_outputs(folder):
    return [
        folder / "labels.nii.gz",
        "--seg-nrrd",
        folder / "labels.seg.nrrd",
        "--summary",
        folder / "summary.json",
        "--preview",
        folder / "preview.png",
    ]


@pytest.fixture
def case(tmp_path, brats_inputs, brats_model):
    """A private copy of the synthetic case (tests here try to overwrite it)."""
    inputs, _ = brats_inputs
    data = tmp_path / "data"
    data.mkdir()
    copied = []
    for name, path in inputs:
        shutil.copy(path, data / Path(path).name)
        copied.append((name, str(data / Path(path).name)))
    return copied, brats_model, tmp_path


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused(capsys, case, spelling, monkeypatch):
    inputs, model, tmp = case
    flair = Path(inputs[0][1])
    monkeypatch.chdir(tmp)
    output = {
        "same": flair,
        "relative": Path("data") / ".." / "data" / flair.name,
        "symlink": tmp / "link.nii.gz",
        "hardlink": tmp / "hard.nii.gz",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(flair)
    if spelling == "hardlink":
        os.link(flair, output)
    before = tree_state(tmp)
    code, _, err = run_cli(segment_args(model, inputs, output), capsys)
    one_error_line(code, err, r"output .* is the input flair: writing it would destroy the scan")
    assert tree_state(tmp) == before


def test_an_output_inside_an_input_dicom_folder_is_refused(capsys, case):
    inputs, model, tmp = case
    series = tmp / "flair_dicom"
    write_dicom_series(sitk.ReadImage(inputs[0][1]), series)
    inputs = [("flair", str(series)), *inputs[1:]]
    before = tree_state(tmp)
    code, _, err = run_cli(segment_args(model, inputs, series / "labels.nii.gz"), capsys)
    one_error_line(code, err, r"is inside the input folder of flair")
    assert tree_state(tmp) == before


def test_existing_files_are_replaced_only_if_a_run_wrote_them(capsys, case):
    inputs, model, tmp = case
    out = tmp / "out"
    out.mkdir()
    mine = out / "labels.nii.gz"
    mine.write_bytes(b"a label map I made")
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)
    one_error_line(code, err, r"output .*labels.nii.gz already exists .*--overwrite")
    assert mine.read_bytes() == b"a label map I made"
    assert sorted(p.name for p in out.iterdir()) == ["labels.nii.gz"]

    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out), "--overwrite"), capsys)
    assert code == 0, err
    assert sitk.ReadImage(str(mine)).GetSize() == sitk.ReadImage(inputs[0][1]).GetSize()
    # a rerun replaces its own results without being asked
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)
    assert code == 0, err
    # ... but not once someone changed one of them (a corrected label saved over it, say)
    (out / "summary.json").write_text('{"edited": true}\n')
    before = tree_state(out)
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)
    one_error_line(code, err, r"--summary .*summary.json already exists \(not written by brainsegfounder, or changed")
    assert tree_state(out) == before


def test_a_rejected_run_makes_no_folder(capsys, case):
    inputs, model, tmp = case
    output = tmp / "new" / "deeper" / "labels.nii.gz"
    code, _, err = run_cli(segment_args(model, [*inputs[:3], ("t2", tmp / "missing.nii.gz")], output), capsys)
    one_error_line(code, err, r"input t2: .*missing.nii.gz does not exist")
    assert not (tmp / "new").exists()
    assert not (tmp / STATE_DIR).exists()


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [(["--overlap", "1.5"], r"overlap must be in \[0, 1\)"), (["--threads", "0"], r"--threads must be at least 1")],
)
def test_arguments_are_checked_before_the_model_loads(capsys, case, extra, pattern):
    inputs, _, tmp = case
    code, _, err = run_cli(segment_args(tmp / "no-such-model.pt", inputs, tmp / "o.nii.gz", *extra), capsys)
    one_error_line(code, err, pattern)


def _full_after_writing(real):
    def write(*args, **kwargs):
        real(*args, **kwargs)  # the bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


WRITERS = {
    "label map": (sitk, "WriteImage"),
    "seg.nrrd": (slicerio, "write_segmentation"),
    "summary": (Path, "write_text"),
    "preview": (brainsegfounder.preview, "draw_preview"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_disk_that_fills_at_each_write_changes_nothing(capsys, case, monkeypatch, writer):
    inputs, model, tmp = case
    out = tmp / "out"
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)
    assert code == 0, err
    before = tree_state(tmp)
    owner, name = WRITERS[writer]
    monkeypatch.setattr(owner, name, _full_after_writing(getattr(owner, name)))
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out), "--overlap", "0.25"), capsys)
    one_error_line(code, err, r"not enough disk space to write .*No space left on device.*nothing was changed")
    assert tree_state(tmp) == before  # the earlier results as they were, no temporaries left


def test_a_failure_while_committing_puts_every_file_back(capsys, case, monkeypatch):
    inputs, model, tmp = case
    out = tmp / "out"
    assert run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)[0] == 0
    before = tree_state(tmp)
    real, calls = Path.replace, []

    def replace(self, target):
        calls.append(target)
        if len(calls) == 3:  # two outputs are in place when the third rename fails
            raise OSError(errno.EIO, "Input/output error")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out), "--overlap", "0.25"), capsys)
    one_error_line(code, err, r"cannot write .*Input/output error.*nothing was changed")
    monkeypatch.undo()
    assert tree_state(tmp) == before


def test_temporaries_of_a_killed_run_are_removed_by_the_next(capsys, case):
    inputs, model, tmp = case
    out = tmp / "out"
    proc = subprocess.Popen(["true"])  # a pid that has certainly ended
    proc.wait()
    stale = out / STATE_DIR / f"tmp-{proc.pid}-{os.uname().nodename}-abcd1234"
    stale.mkdir(parents=True)
    (stale / "preview.png").write_bytes(b"half a png")
    code, _, err = run_cli(segment_args(model, inputs, *all_outputs(out)), capsys)
    assert code == 0, err
    assert not stale.exists()
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == ["written.json"]


def test_a_really_full_disk(capsys, case):
    """A 64 kB file system: the label map, seg.nrrd and summary fit, the preview does not."""
    inputs, model, tmp = case
    with small_disk(tmp / "disk", "64k") as disk:
        (disk / "labels.nii.gz").write_bytes(b"an older result")
        code, _, err = run_cli(segment_args(model, inputs, *all_outputs(disk), "--overwrite"), capsys)
        one_error_line(code, err, r"not enough disk space to write .*nothing was changed")
        assert sorted(p.name for p in disk.iterdir()) == ["labels.nii.gz"]
        assert (disk / "labels.nii.gz").read_bytes() == b"an older result"


def test_a_label_map_written_short_is_not_committed(capsys, case):
    """ITK's NIfTI writer does not raise on a full disk: it leaves a short file. A 16 kB file
    system holds part of the label map and nothing else."""
    inputs, model, tmp = case
    with small_disk(tmp / "disk", "16k") as disk:
        code, _, err = run_cli(segment_args(model, inputs, disk / "labels.nii.gz", "--roi", "64"), capsys)
        one_error_line(code, err, r"not enough disk space to write .*written short")
        assert list(disk.iterdir()) == []
