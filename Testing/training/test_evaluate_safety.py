"""evaluate: a prediction that is no label map of the data set's schema is refused by name, and
the output folder changes only when a whole evaluation is written (or not at all)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import one_error_line, run_cli, small_disk, tree_state
from quick import CPU

CASE21, CASE23 = "BraTS2021_00001", "BraTS-GLI-00001-000"


def _write(array_zyx, path, dtype=np.uint8):
    image = sitk.GetImageFromArray(array_zyx.astype(dtype))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))
    return path


def _truth(et):
    truth = np.zeros((24, 40, 40), np.uint8)
    truth[5:15, 10:20, 10:20] = 2
    truth[8:12, 13:17, 13:17] = et
    return truth


def _data_set(root, layout="brats2021"):
    """One case in a BraTS folder of ``layout`` and a prediction folder with its exact labels."""
    case, sep, tags, et = (
        (CASE21, "_", ("flair", "t1ce", "t1", "t2"), 4)
        if layout == "brats2021"
        else (CASE23, "-", ("t2f", "t1c", "t1n", "t2w"), 3)
    )
    folder = root / "data" / case
    folder.mkdir(parents=True)
    truth = _truth(et)
    for tag in tags:
        _write((truth > 0) * 100 + 10, folder / f"{case}{sep}{tag}.nii.gz")
    _write(truth, folder / f"{case}{sep}seg.nii.gz")
    (root / "pred").mkdir()
    _write(truth, root / "pred" / f"{case}.nii.gz")
    return root / "data", root / "pred" / f"{case}.nii.gz", truth


def _evaluate(capsys, data, pred, out, *extra):
    return run_cli(["evaluate", "--data", data, "--pred", pred, "--out", out, "--no-lesion-wise", *CPU, *extra], capsys)


def _bad_prediction(path, truth, problem):
    if problem == "value 7":
        _write(np.where(truth == 2, 7, truth), path)
    elif problem == "value 255":
        _write(np.where(truth == 2, 255, truth), path)
    elif problem == "2023 ET in 2021 data":
        _write(np.where(truth == 4, 3, truth), path)
    elif problem == "2021 ET in 2023 data":
        _write(np.where(truth == 3, 4, truth), path)
    elif problem == "probabilities":
        _write(truth / 4.0, path, np.float32)
    elif problem == "NaN":
        _write(np.where(truth == 2, np.nan, truth), path, np.float32)
    elif problem == "empty file":
        path.write_bytes(b"")
    elif problem == "truncated":  # the header whole, the voxels cut short
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 3 // 4])
    elif problem == "not an image":
        path.write_bytes(b"this is no image, only text\n" * 40)
    elif problem == "a folder":
        path.unlink()
        path.mkdir()
    elif problem == "symlink loop":
        path.unlink()
        path.symlink_to(path.name)
    elif problem == "2D slice":
        _write(truth[:1], path)


@pytest.mark.parametrize(
    ("problem", "layout", "expected"),
    [
        ("value 7", "brats2021", r"case BraTS2021_00001: prediction .* holds label values \[7\] outside the schema"),
        ("value 255", "brats2021", r"holds label values \[255\] outside the schema brats_regions \(brats2021, ET=4\)"),
        ("2023 ET in 2021 data", "brats2021", r"holds label values \[3\] .*\(brats2021, ET=4\)"),
        ("2021 ET in 2023 data", "brats2023", r"case BraTS-GLI-00001-000: .* values \[4\] .*\(brats2023, ET=3\)"),
        ("probabilities", "brats2021", r"holds values that are no whole labels \(e\.g\. 0\.5\)"),
        ("NaN", "brats2021", r"holds values that are no whole labels \(e\.g\. nan\)"),
        ("empty file", "brats2021", r"case BraTS2021_00001: prediction: .* is empty \(0 bytes\)"),
        ("truncated", "brats2021", r"case BraTS2021_00001: prediction: .* is truncated"),
        ("not an image", "brats2021", r"case BraTS2021_00001: prediction: .*BraTS2021_00001\.nii\.gz"),
        ("a folder", "brats2021", r"case BraTS2021_00001: prediction: .* is a folder"),
        ("symlink loop", "brats2021", r"case BraTS2021_00001: prediction: .* is a loop of symbolic links"),
        ("2D slice", "brats2021", r"case BraTS2021_00001: prediction: .* 2D slice"),
    ],
)
def test_a_prediction_that_is_no_label_map_of_the_schema_is_refused(tmp_path, capsys, problem, layout, expected):
    """Before: all but the unreadable ones were scored without a word (7 and 255 as tumour, a 3
    as no ET, probabilities as nothing, a truncated file's half as the whole)."""
    data, pred, truth = _data_set(tmp_path, layout)
    _bad_prediction(pred, truth, problem)
    before = tree_state(tmp_path)
    code, _, err = _evaluate(capsys, data, pred.parent, tmp_path / "out")
    one_error_line(code, err, expected)
    assert tree_state(tmp_path) == before  # no output folder, nothing else
    assert not (tmp_path / "out").exists()


def test_a_label_map_stored_as_whole_floats_is_scored(tmp_path, capsys):
    data, pred, truth = _data_set(tmp_path)
    _write(truth, pred, np.float32)
    code, out, err = _evaluate(capsys, data, pred.parent, tmp_path / "out")
    assert code == 0, err
    assert "1 cases" in out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["regions"]["ET"]["dice"]["mean"] == 1.0


def test_without_enhancing_tumour_in_the_truth_the_prediction_says_its_convention(tmp_path, capsys):
    """A datalist that names no convention and a truth with no ET (neither 3 nor 4): a 2023
    prediction's 3 is its ET (a false positive), not a value outside the schema."""
    data, pred, truth = _data_set(tmp_path)
    truth[truth == 4] = 1
    case = data / CASE21
    _write(truth, case / f"{CASE21}_seg.nii.gz")
    images = [f"{CASE21}/{CASE21}_{t}.nii.gz" for t in ("flair", "t1ce", "t1", "t2")]
    listing = {"training": [{"image": images, "label": f"{CASE21}/{CASE21}_seg.nii.gz"}]}
    (data / "datalist.json").write_text(json.dumps(listing))
    predicted = truth.copy()
    predicted[9:11, 14:16, 14:16] = 3
    _write(predicted, pred)
    code, _, err = _evaluate(capsys, data / "datalist.json", pred.parent, tmp_path / "out")
    assert code == 0, err
    regions = json.loads((tmp_path / "out" / "summary.json").read_text())["regions"]
    assert regions["ET"]["dice"]["mean"] == 0.0  # a predicted ET where there is none
    assert regions["WT"]["dice"]["mean"] == 1.0


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("pred is a file", r"--pred: .* is a file, not a folder"),
        ("pred is a loop", r"--pred: .* is a loop of symbolic links"),
        ("out is a file", r"--out: .* is a file, not a folder"),
        ("out is a loop", r"--out: .* is a loop of symbolic links"),
        ("run is no run", r"--run .* has no splits\.json and recipe\.yaml"),
        ("data is an image", r"cannot read the datalist .*seg\.nii\.gz .*give a MONAI datalist JSON file"),
        ("data is a loop", r"data set .* is a symbolic link that leads nowhere"),
        ("bad device", r"unknown device 'gpu7'"),
    ],
)
def test_wrong_kinds_of_path_are_one_line_and_make_no_folder(tmp_path, capsys, problem, expected):
    """Before: a binary file as --data was an internal error, and every one of these left an
    empty output folder behind."""
    data, pred, _ = _data_set(tmp_path)
    out, extra = tmp_path / "out", []
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    if problem == "pred is a file":
        pred = tmp_path / "a-file"
    elif problem == "pred is a loop":
        pred = tmp_path / "loop"
    elif problem == "out is a file":
        out = tmp_path / "a-file"
    elif problem == "out is a loop":
        out = tmp_path / "loop"
    elif problem == "run is no run":
        extra = ["--run", data]
    elif problem == "data is an image":
        data = data / CASE21 / f"{CASE21}_seg.nii.gz"
    elif problem == "data is a loop":
        data = tmp_path / "loop"
    elif problem == "bad device":
        extra = ["--device", "gpu7"]
    before = tree_state(tmp_path)
    code, _, err = _evaluate(capsys, data, pred.parent if pred.suffix == ".gz" else pred, out, *extra)
    one_error_line(code, err, expected)
    assert tree_state(tmp_path) == before


def test_results_are_replaced_together_or_not_at_all(tmp_path, capsys, monkeypatch):
    """A rerun replaces the results an earlier evaluation wrote; a file the user made is kept
    unless --overwrite; a failure while writing (a full disk at the plot) changes nothing."""
    from brainsegfounder_training.harness import plots

    data, pred, truth = _data_set(tmp_path)
    out = tmp_path / "out"
    code, _, err = _evaluate(capsys, data, pred.parent, out)
    assert code == 0, err
    code, _, err = _evaluate(capsys, data, pred.parent, out)  # its own results: replaced
    assert code == 0, err

    (out / "metrics.csv").write_text("my own table\n")
    before = tree_state(out)
    code, _, err = _evaluate(capsys, data, pred.parent, out)
    one_error_line(code, err, r"metrics\.csv .* already exists .*--overwrite")
    assert tree_state(out) == before

    real = plots._save

    def full(plt, fig, path):
        real(plt, fig, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "_save", full)
    code, _, err = _evaluate(capsys, data, pred.parent, out, "--overwrite")
    one_error_line(code, err, r"cannot write .*out \(the disk is full\); nothing in .*out was changed")
    assert tree_state(out) == before
    monkeypatch.setattr(plots, "_save", real)

    _write(np.where(truth == 2, 7, truth), pred)  # the last case fails after the others were scored
    code, _, err = _evaluate(capsys, data, pred.parent, out, "--overwrite")
    one_error_line(code, err, r"label values \[7\]")
    assert tree_state(out) == before

    _write(truth, pred)
    code, _, err = _evaluate(capsys, data, pred.parent, out, "--overwrite")
    assert code == 0, err
    assert (out / "metrics.csv").read_text().startswith("case_id,region,dice")


def test_a_model_never_replaces_the_users_predictions(tmp_path, capsys, brats_root, brats_model, monkeypatch):
    """--model writes OUT/predictions/CASE.nii.gz: a file the user put there is refused before
    the model loads; a run stopped in the middle writes none of them."""
    from brainsegfounder import segment
    from brainsegfounder.progress import CancelToken
    from brainsegfounder_training.finetuning.evaluate import evaluate

    out = tmp_path / "eval"
    (out / "predictions").mkdir(parents=True)
    mine = out / "predictions" / "BraTS2021_00001.nii.gz"
    mine.write_bytes(b"my own segmentation")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(segment, "Segmenter", no_model)
    code, _, err = run_cli(["evaluate", "--data", brats_root, "--model", brats_model, "--out", out, *CPU], capsys)
    one_error_line(code, err, r"prediction BraTS2021_00001 .*BraTS2021_00001\.nii\.gz already exists")
    assert mine.read_bytes() == b"my own segmentation"
    monkeypatch.undo()

    mine.unlink()
    before = tree_state(tmp_path)
    cancel = CancelToken()
    real = segment.Segmenter.label_image

    def then_cancel(self, *args, **kwargs):
        cancel.cancel()  # Ctrl-C during the first case
        return real(self, *args, **kwargs)

    monkeypatch.setattr(segment.Segmenter, "label_image", then_cancel)
    with pytest.raises(Exception, match="cancel"):
        evaluate(str(brats_root), str(out), model=str(brats_model), device="cpu", lesion_wise=False, cancel=cancel)
    assert tree_state(tmp_path) == before


def test_a_prediction_the_disk_cut_short_is_a_write_error(tmp_path, capsys, brats_root, brats_model, monkeypatch):
    """ITK's NIfTI writer meets a full disk with a message on stderr and a short file, no error
    (measured on a 64 kB tmpfs); the written prediction is read back."""
    from brainsegfounder_training.finetuning import evaluate as module

    real = module.sitk.WriteImage

    def short(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(module.sitk, "WriteImage", short)
    code, _, err = run_cli(
        ["evaluate", "--data", brats_root, "--model", brats_model, "--out", tmp_path / "eval", *CPU], capsys
    )
    one_error_line(code, err, r"cannot write BraTS2021_00001\.nii\.gz in .*eval \(the file reads back short\)")
    assert not (tmp_path / "eval").exists()


def test_a_really_full_disk_leaves_the_results_as_they_were(tmp_path, capsys):
    """24 kB: the table and the summary fit, the box plots (~30 kB) do not."""
    data, pred, _ = _data_set(tmp_path)
    with small_disk(tmp_path / "disk", "24k") as disk:
        (disk / "metrics.csv").write_text("an older result\n")
        code, _, err = _evaluate(capsys, data, pred.parent, disk, "--overwrite")
        one_error_line(code, err, r"\(the disk is full\); nothing in .* was changed\. Free space and run again")
        assert sorted(p.name for p in disk.iterdir()) == ["metrics.csv"]
        assert (disk / "metrics.csv").read_text() == "an older result\n"


def test_a_really_full_disk_under_the_predictions_of_a_model(tmp_path, capsys, brats_root, brats_model):
    """16 kB: the first label map does not fit; ITK's writer says nothing, the read-back does."""
    with small_disk(tmp_path / "disk", "16k") as disk:
        args = ["evaluate", "--data", brats_root, "--model", brats_model, "--out", disk / "eval", *CPU]
        code, _, err = run_cli(args, capsys)
        one_error_line(code, err, r"cannot write BraTS2021_00001\.nii\.gz in .*eval \(the disk is full\)")
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("case_id", ["../../escaped", "CON", "a/b"])
def test_a_datalist_case_id_never_names_a_file_outside_its_folder(tmp_path, train_root, case_id):
    """A case id names evaluate's prediction files: one from a datalist is checked like any name."""
    from brainsegfounder.errors import UserError
    from brainsegfounder_training.finetuning.datasets import from_datalist

    data = tmp_path / "data"
    shutil.copytree(train_root, data)
    datalist = json.loads((data / "datalist.json").read_text())
    datalist["training"][0]["case_id"] = case_id
    (data / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(UserError, match=r"case id .* is not usable as a folder name"):
        from_datalist(data / "datalist.json", ("flair", "t1ce", "t1", "t2"))
