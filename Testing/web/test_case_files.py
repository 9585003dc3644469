"""Where the web app's images come from (no browser, no trame): uploads and the cases folder."""

from __future__ import annotations

import pytest

from brainsegfounder.errors import UserError
from brainsegfounder_web.case_files import (
    case_folder,
    is_study_upload,
    list_cases,
    store_study_upload,
    store_upload,
)

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


def study_zip(tmp_path, modalities=("flair", "t1ce", "t1", "t2"), name="patient-7.zip"):
    """The sample case as a GE DICOM study (with a localizer), zipped as a PACS export."""
    import zipfile

    import SimpleITK as sitk

    from brainsegfounder.synth.dicom import write_study

    tags = {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"}
    images = {m: sitk.ReadImage(str(SAMPLE / f"BrainSegFounderGlioma-{tags[m]}.nii.gz")) for m in modalities}
    folder = tmp_path / "export" / "patient-7"
    write_study(images, folder, "ge", extras=("localizer",))
    archive = tmp_path / "export" / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder.parent))
    return archive, folder


def test_a_dicom_study_is_stored_from_a_zip_or_its_files_and_listed_in_the_cases_folder(tmp_path):
    archive, folder = study_zip(tmp_path)
    session = tmp_path / "session"
    session.mkdir()
    store_upload(upload(T2F), session, max_bytes=10**7)
    assert is_study_upload(upload(archive))
    study = store_study_upload(upload(archive), session, max_bytes=10**7)
    assert study == session / "study"
    assert [p.name for p in session.iterdir()] == ["study"]  # the images uploaded before are gone
    assert sum(1 for p in study.rglob("*") if p.is_file()) == sum(1 for p in folder.rglob("*") if p.is_file())
    files = [p for p in folder.rglob("*") if p.is_file()][:5]  # files as a browser sends a folder's
    as_files = [{"name": f"{p.parent.name}-{p.name}", "content": p.read_bytes()} for p in files]
    assert is_study_upload(as_files)
    assert not is_study_upload(upload(T2F))
    assert sorted(p.name for p in store_study_upload(as_files, session, max_bytes=10**7).iterdir()) == sorted(
        f["name"] for f in as_files
    )
    cases = tmp_path / "cases"
    folder.parent.rename(cases)
    assert list_cases(cases) == ["patient-7"]  # a study folder is a case; the zip beside it is not
    assert case_folder(cases, "patient-7") == cases / "patient-7"


def _slip(tmp_path):
    import zipfile

    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("../outside.dcm", b"x")
    return path


def _not_dicom(tmp_path):
    import zipfile

    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", b"no images here")
    return path


def _bomb(tmp_path):
    import zipfile

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", bytes(50 * 10**6))  # 50 MB of zeros: a few kB zipped
    return path


def _corrupt(tmp_path):
    archive, _ = study_zip(tmp_path)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    archive.write_bytes(bytes(data))
    return archive


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_slip, "points outside the archive's folder"),
        (_not_dicom, "the upload holds no DICOM file"),
        (_bomb, "unpacks to 50 MB, over the limit of 40 MB"),
        (_corrupt, "patient-7.zip is damaged"),
    ],
    ids=["zip-slip", "no-dicom", "zip-bomb", "corrupt"],
)
def test_a_bad_study_upload_is_refused_with_one_line_and_writes_nothing(tmp_path, make, says):
    archive = make(tmp_path)
    session = tmp_path / "session"
    session.mkdir()
    store_upload(upload(T1C), session, max_bytes=10**7)
    before = tree_state(session)
    with pytest.raises(UserError, match=says) as raised:
        store_study_upload(upload(archive), session, max_bytes=10**7)
    assert "\n" not in str(raised.value)
    assert str(tmp_path) not in str(raised.value)
    assert tree_state(session) == before
    assert not (tmp_path / "outside.dcm").exists()


def test_a_study_upload_becomes_the_models_inputs_and_a_refused_one_keeps_the_case(tmp_path, home, monkeypatch):
    """The session (slicer-core's scene, no browser): the series the demo model needs are loaded
    and assigned, the case named after the zip; a study without a FLAIR changes nothing."""
    # the Logic tests' scenes; first, as slicer-core imports every module beside it on its path
    monkeypatch.syspath_prepend(str(ROOT / "Testing" / "slicer"))
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed")
    from brainsegfounder_web.session import WebSession
    from BrainSegFounderSlicerLib.models import ModelManager

    from scenes import DEMO, new_scene

    scene, volumes = new_scene()
    (tmp_path / "uploads").mkdir()
    session = WebSession(scene, volumes, tmp_path / "uploads", models=ModelManager(cache=tmp_path / "downloads"))
    session.choose_model(DEMO)
    archive, _ = study_zip(tmp_path)
    nodes = session.load_upload(upload(archive))
    assert len(nodes) == 4
    assert session.case_id == "patient_7"  # case_id_from: the zip's name, made a plain id
    rows = {r["modality"]: scene.GetNodeByID(r["node"]).GetName() for r in session.input_rows()}
    assert all(name.startswith(f"{m} - series ") for m, name in rows.items()), rows
    assert len(session.study_lines) == 4
    assert session.study_lines[0].startswith("FLAIR (T2-FLAIR): series 1")

    bad, _ = study_zip(tmp_path / "b", modalities=("t1ce", "t1", "t2"), name="no-flair.zip")
    with pytest.raises(UserError, match="has no FLAIR series"):
        session.load_upload(upload(bad))
    assert {r["modality"]: scene.GetNodeByID(r["node"]).GetName() for r in session.input_rows()} == rows
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 4
    assert list((tmp_path / "uploads").iterdir()) == []  # the refused study was not kept
