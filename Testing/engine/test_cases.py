"""Saved training cases: atomic revisions, never overwritten, listed in the datalist."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk


def _case(value):
    image = sitk.GetImageFromArray(np.full((6, 7, 8), value, np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    label_array = np.zeros((6, 7, 8), np.uint8)
    label_array[2:4, 2:4, 2:4] = 1
    label = sitk.GetImageFromArray(label_array)
    label.CopyInformation(image)
    return {"t1": image}, label


def test_second_save_makes_a_revision(tmp_path):
    from brainsegfounder.cases import list_cases, save_case

    first = save_case(
        tmp_path, "case-1", *_case(1.0), "lesion", source_model={"name": "m", "version": "1"}, author="anna"
    )
    second = save_case(tmp_path, "case-1", *_case(2.0), "lesion", author="ben")
    assert (first.revision, second.revision) == (1, 2)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(first.folder / "t1.nii.gz"))).max() == 1.0  # kept
    assert first.info["content_sha256"] != second.info["content_sha256"]
    info = json.loads((second.folder / "case.json").read_text())
    assert info["author"] == "ben"
    assert info["label_values"] == [0, 1]
    assert info["modalities"] == ["t1"]
    listing = json.loads((tmp_path / "datalist.json").read_text())
    assert [e["image"] for e in listing["training"]] == [["case-1/r002/t1.nii.gz"]]
    assert [c.revision for c in list_cases(tmp_path)] == [2]
    assert not [p for p in (tmp_path / "case-1").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_inputs_off_the_reference_grid_are_refused(tmp_path):
    import pytest

    from brainsegfounder.cases import save_case
    from brainsegfounder.errors import UserError

    images, label = _case(1.0)
    label.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(UserError, match="label is not on the reference grid"):
        save_case(tmp_path, "case-1", images, label, "lesion")
    assert not (tmp_path / "case-1" / "r001").exists()
