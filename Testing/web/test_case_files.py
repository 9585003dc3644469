"""Where the web app's images come from (no browser, no trame): uploads and the cases folder."""

from __future__ import annotations

import pytest

from brainsegfounder.errors import UserError
from brainsegfounder_web.case_files import case_folder, list_cases, store_upload

from helpers import ROOT, tree_state

SAMPLE = ROOT / "Resources" / "SampleData"
T2F, T1C = (SAMPLE / f"BrainSegFounderGlioma-{tag}.nii.gz" for tag in ("t2f", "t1c"))


def upload(*paths):
    return [{"name": p.name, "content": p.read_bytes()} for p in paths]


def test_an_upload_of_images_replaces_the_previous_one(tmp_path):
    first = store_upload(upload(T2F), tmp_path, max_bytes=10**7)
    assert [p.name for p in first] == [T2F.name]
    second = store_upload(upload(T1C), tmp_path, max_bytes=10**7)
    assert sorted(p.name for p in tmp_path.iterdir()) == [T1C.name]
    assert second[0].read_bytes() == T1C.read_bytes()


@pytest.mark.parametrize(
    ("files", "max_bytes", "says"),
    [
        ([{"name": "case-t2f.nii.gz", "content": b"a text file\n"}], 10**7, "not a readable NIfTI"),
        (upload(T2F, T1C), 10**5, "over this server's limit"),
        ([{"name": "../case-t2f.nii.gz", "content": T2F.read_bytes()}], 10**7, "not usable as a folder name"),
        ([{"name": "sub/case-t2f.nii.gz", "content": T2F.read_bytes()}], 10**7, "not usable as a folder name"),
        ([{"name": "notes.txt", "content": b"x"}], 10**7, "not a NIfTI, NRRD or MHA file"),
        ([*upload(T2F), {"name": "bad-t1c.nii.gz", "content": b"x"}], 10**7, "bad-t1c.nii.gz is not a readable"),
        ([], 10**7, "no file was uploaded"),
    ],
)
def test_a_bad_upload_is_refused_with_one_line_and_writes_nothing(tmp_path, files, max_bytes, says):
    store_upload(upload(T1C), tmp_path, max_bytes=10**7)  # the case loaded before stays as it was
    before = tree_state(tmp_path)
    with pytest.raises(UserError, match=says) as raised:
        store_upload(files, tmp_path, max_bytes=max_bytes)
    assert "\n" not in str(raised.value)
    assert str(tmp_path) not in str(raised.value)  # the server's folders are not the user's business
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("case_id", ["..", "../cases", "sample/..", "/etc", "missing"])
def test_a_case_id_outside_the_cases_folder_is_refused(tmp_path, case_id):
    (tmp_path / "cases" / "sample").mkdir(parents=True)
    (tmp_path / "cases" / "sample" / T2F.name).write_bytes(T2F.read_bytes())
    assert list_cases(tmp_path / "cases") == ["sample"]
    assert case_folder(tmp_path / "cases", "sample") == tmp_path / "cases" / "sample"
    with pytest.raises(UserError, match="case"):
        case_folder(tmp_path / "cases", case_id)
