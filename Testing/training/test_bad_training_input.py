"""Bad training input: one clear line, a non-zero exit, and nothing written or overwritten."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import run_cli
from quick import CPU, QUICK


def _finetune(capsys, data, out, *extra):
    return run_cli(
        [
            "finetune",
            "--config",
            "brats",
            "--data",
            data,
            "--out",
            out,
            *CPU,
            *QUICK,
            *extra,
        ],
        capsys,
    )


def _copy(train_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(train_root, root)
    return root


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "no labelled cases found"),
        ("bad_label", r"label values \[7\] are outside the schema brats_regions"),
        ("other_grid", "is not on the grid of"),
        ("few", "2 cases are fewer than the 5 folds"),
        ("escape", "points outside its folder"),
    ],
)
def test_bad_data_sets(tmp_path, train_root, capsys, problem, expected):
    extra = []
    data = _copy(train_root, tmp_path)
    label = data / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz"
    if problem == "missing":
        data = tmp_path / "nowhere"
    elif problem == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif problem == "bad_label":
        image = sitk.ReadImage(str(label))
        array = sitk.GetArrayFromImage(image)
        array[array == 2] = 7
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        sitk.WriteImage(bad, str(label))
    elif problem == "other_grid":
        image = sitk.ReadImage(str(label))
        sitk.WriteImage(
            sitk.Resample(
                image,
                [s + 2 for s in image.GetSize()],
                sitk.Transform(),
                sitk.sitkNearestNeighbor,
                image.GetOrigin(),
                image.GetSpacing(),
                image.GetDirection(),
            ),
            str(label),
        )
    elif problem == "few":
        listing = json.loads((data / "datalist.json").read_text())
        listing["training"] = listing["training"][:2]
        (data / "datalist.json").write_text(json.dumps(listing))
        extra = ["data.folds=5"]
    elif problem == "escape":
        listing = json.loads((data / "datalist.json").read_text())
        listing["training"][0]["label"] = "../../etc/passwd"
        (data / "datalist.json").write_text(json.dumps(listing))
    code, _out, err = _finetune(capsys, data, tmp_path / "run", *extra)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "run" / "state.pt").exists()
    assert not (tmp_path / "run" / "best.pt").exists()


def test_existing_run_is_never_overwritten(tmp_path, train_root, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"precious")
    code, _, err = _finetune(capsys, train_root, run)
    assert code == 2
    assert "--resume" in err
    assert (run / "best.pt").read_bytes() == b"precious"


def test_unknown_override(tmp_path, train_root, capsys):
    code, _, err = _finetune(capsys, train_root, tmp_path / "run", "train.epoch=3")
    assert code == 2
    assert "unknown recipe key 'train.epoch'" in err
    assert not (tmp_path / "run").exists()


def test_saved_case_ids_cannot_escape(tmp_path):
    from brainsegfounder.cases import save_case
    from brainsegfounder.errors import UserError

    image = sitk.GetImageFromArray(np.ones((8, 8, 8), np.float32))
    label = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.uint8))
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(UserError, match="not usable as a folder name"):
            save_case(tmp_path, bad, {"t1": image}, label, "lesion")
    assert list(tmp_path.iterdir()) == []
