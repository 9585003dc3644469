"""evaluate: a prediction that is no label map of the data set's schema is refused by name, and
the output folder changes only when a whole evaluation is written (or not at all)."""

from __future__ import annotations

import csv
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


def _two_cases(root, truths, preds):
    """A datalist that names no layout (so no convention) over cases A and B, and predictions."""
    entries = []
    (root / "pred").mkdir()
    for case, truth, pred in zip("AB", truths, preds, strict=True):
        (root / "data" / case).mkdir(parents=True)
        images = [f"{case}/{t}.nii.gz" for t in ("flair", "t1ce", "t1", "t2")]
        for image in images:
            _write((truth > 0) * 100 + 10, root / "data" / image)
        _write(truth, root / "data" / case / "seg.nii.gz")
        _write(pred, root / "pred" / f"{case}.nii.gz")
        entries.append({"image": images, "label": f"{case}/seg.nii.gz"})
    (root / "data" / "datalist.json").write_text(json.dumps({"training": entries}))
    return root / "data" / "datalist.json", root / "pred"


def _false_et(et):
    """An empty truth's prediction: 400 voxels of 2 mm^3 (0.8 mL) of enhancing tumour."""
    pred = np.zeros((24, 40, 40), np.uint8)
    pred[14:18, 20:30, 20:30] = et
    return pred


def test_an_empty_truth_with_a_false_enhancing_tumour_scores_zero(tmp_path, capsys):
    """The defect: the convention was guessed per case from its truth, so case B (empty truth)
    was read as brats2021 and its prediction's 3s vanished: ET Dice 1.0, HD95 0 for a 0.8 mL
    false enhancing tumour (measured before af7e9eb). Case A's truth shows the data set's ET 3."""
    empty = np.zeros((24, 40, 40), np.uint8)
    datalist, pred = _two_cases(tmp_path, [_truth(3), empty], [_truth(3), _false_et(3)])
    code, _, err = _evaluate(capsys, datalist, pred, tmp_path / "out")
    assert code == 0, err
    rows = {(r["case_id"], r["region"]): r for r in csv.DictReader((tmp_path / "out" / "metrics.csv").open())}
    assert float(rows["B", "ET"]["dice"]) == 0.0
    assert float(rows["B", "ET"]["hd95_mm"]) == 374.0  # BraTS's value where one map is empty
    assert float(rows["B", "ET"]["volume_pred_ml"]) == pytest.approx(0.8)
    assert float(rows["A", "ET"]["dice"]) == 1.0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["label_convention"] == "brats2023"


@pytest.mark.parametrize(
    ("story", "truths", "preds", "extra", "expected"),
    [
        (
            "neither 3 nor 4 in any truth, nothing says",
            [1, 0],
            [3, 3],
            [],
            r"does not say its BraTS label convention and no case's ground truth has enhancing tumour "
            r"\(3 or 4\) to show it; pass --labels brats2021 \(ET=4\) or --labels brats2023 \(ET=3\)",
        ),
        (
            "3 in one truth, 4 in the other",
            [3, 4],
            [3, 4],
            [],
            r"mixes BraTS label conventions: enhancing tumour is 3 \(brats2023\) in case A and 4 "
            r"\(brats2021\) in case B; .*pass --labels brats2021\|brats2023",
        ),
        (
            "a 2021 data set (4 in A's truth), a 3 in B's prediction",
            [4, 0],
            [4, 3],
            [],
            r"case B: prediction .* holds label values \[3\] outside the schema brats_regions \(brats2021, ET=4\)",
        ),
        (
            "a 2023 data set (3 in A's truth), a 4 in B's prediction",
            [3, 0],
            [3, 4],
            [],
            r"case B: prediction .* holds label values \[4\] outside the schema brats_regions \(brats2023, ET=3\)",
        ),
        (
            "--labels brats2021 over a truth with 3",
            [3, 0],
            [3, 0],
            ["--labels", "brats2021"],
            r"case A: label values \[3\] are outside the schema brats_regions",
        ),
    ],
)
def test_one_label_convention_per_data_set(tmp_path, capsys, story, truths, preds, extra, expected):
    """Before: each case's convention was guessed (from its truth, then from its prediction), so
    a data set could be read as both, and a prediction's other-convention ET was scored."""
    datalist, pred = _two_cases(
        tmp_path,
        [_truth(et) if et else np.zeros((24, 40, 40), np.uint8) for et in truths],
        [_truth(et) if i == 0 else _false_et(et) for i, et in enumerate(preds)],
    )
    code, _, err = _evaluate(capsys, datalist, pred, tmp_path / "out", *extra)
    one_error_line(code, err, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels", ["brats2021", "brats2023"])
def test_labels_says_the_convention_where_no_truth_shows_it(tmp_path, capsys, labels):
    """No ET in any truth: --labels names it, and the prediction's ET of that convention is a
    false positive (Dice 0, HD95 374)."""
    et = 4 if labels == "brats2021" else 3
    no_et = np.where(_truth(et) == et, 1, _truth(et))
    datalist, pred = _two_cases(tmp_path, [no_et, no_et], [no_et, np.maximum(no_et, _false_et(et))])
    code, _, err = _evaluate(capsys, datalist, pred, tmp_path / "out", "--labels", labels)
    assert code == 0, err
    regions = json.loads((tmp_path / "out" / "summary.json").read_text())["regions"]
    assert regions["ET"]["dice"]["mean"] == pytest.approx(0.5)  # A: both empty 1, B: false ET 0
    assert regions["ET"]["hd95_mm"]["mean"] == pytest.approx(374 / 2)


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
