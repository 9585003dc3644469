"""DICOM out: --dicom-seg writes a DICOM Segmentation that references the source series, with
the seg.nrrd's segment names, colours and SNOMED codes, and reads back (highdicom, pydicom) to
the label map exactly."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio

from brainsegfounder.dicom_seg import build_dicom_seg, read_dicom_seg
from brainsegfounder.dicom_study import read_study
from brainsegfounder.labels import schema
from brainsegfounder.synth.dicom import write_study

from helpers import one_error_line, run_cli, segment_args, tree_state

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def study(tmp_path_factory, brats_inputs):
    inputs, _ = brats_inputs
    folder = tmp_path_factory.mktemp("dicom") / "study"
    uids = write_study({m: sitk.ReadImage(p) for m, p in inputs}, folder, "ge")
    return folder, uids


@pytest.mark.parametrize("labels", ["brats2021", "brats2023"])
def test_a_dicom_seg_round_trips_to_the_label_map_with_the_seg_nrrds_segments(
    tmp_path, capsys, brats_model, study, labels
):
    folder, uids = study
    out = tmp_path / "out"
    args = [
        "segment",
        "--model",
        str(brats_model),
        "--study",
        str(folder),
        "--output",
        str(out / "labels.nii.gz"),
        "--seg-nrrd",
        str(out / "labels.seg.nrrd"),
        "--dicom-seg",
        str(out / "labels.dcm"),
        "--labels",
        labels,
        "--runtime",
        "torch",
        "--device",
        "cpu",
        "--progress",
        "none",
    ]
    code, out_text, err = run_cli(args, capsys)
    assert code == 0, err
    assert "labels.dcm" in out_text
    label_map = sitk.ReadImage(str(out / "labels.nii.gz"))
    values = np.unique(sitk.GetArrayViewFromImage(label_map))
    assert len(values) > 2, "the tiny model should label several regions, or the round trip proves little"

    ds = pydicom.dcmread(out / "labels.dcm")
    assert ds.SOPClassUID == SEG_STORAGE
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["flair"]  # the reference input's series
    flair = pydicom.dcmread(next((folder / "S001").iterdir()), stop_before_pixels=True)
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.PatientID) == (
        flair.StudyInstanceUID,
        flair.FrameOfReferenceUID,
        flair.PatientID,
    )

    files = read_study(folder).find(uids["flair"]).files
    back, segments = read_dicom_seg(out / "labels.dcm", label_map, files)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label_map))

    nrrd = slicerio.read_segmentation(str(out / "labels.seg.nrrd"))
    by_value = {s["labelValue"]: s for s in nrrd["segments"]}
    assert set(segments) == set(by_value) == set(schema("brats_regions").label_values(labels))
    for value, segment in segments.items():
        expected = by_value[value]
        assert segment["name"] == expected["name"]
        assert segment["key"] == expected["id"]
        assert np.allclose(segment["color"], expected["color"], atol=0.01)  # through CIELab and back
        assert list(segment["snomed"]) == expected["terminology"]["type"]


def test_an_empty_label_map_still_makes_a_valid_seg(study, brats_inputs):
    folder, uids = study
    files = read_study(folder).find(uids["flair"]).files
    reference = sitk.ReadImage(brats_inputs[0][0][1])
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    seg = build_dicom_seg(empty, schema("brats_regions").label_values("brats2021"), files)
    assert len(seg.SegmentSequence) == 3
    assert not np.any(seg.pixel_array)


def test_dicom_seg_without_dicom_inputs_is_refused_before_the_model_loads(tmp_path, capsys, brats_inputs):
    inputs, _ = brats_inputs
    before = tree_state(tmp_path)
    args = segment_args(tmp_path / "no-model.pt", inputs, tmp_path / "out" / "l.nii.gz", "--dicom-seg", "x.dcm")
    code, _, err = run_cli(args, capsys)
    one_error_line(code, err, r"--dicom-seg needs the scans from DICOM \(--study FOLDER or --input NAME=DICOM_SERIES")
    assert tree_state(tmp_path) == before


def test_dicom_seg_needs_a_dcm_name(tmp_path, capsys, study):
    folder, _ = study
    args = ["segment", "--model", "m.pt", "--study", str(folder), "--output", str(tmp_path / "l.nii.gz")]
    code, _, err = run_cli([*args, "--dicom-seg", str(tmp_path / "seg.nrrd"), "--progress", "none"], capsys)
    one_error_line(code, err, r"--dicom-seg .*seg.nrrd must end in .dcm")


def test_a_dicom_seg_may_not_be_written_into_the_study(tmp_path, capsys, study):
    folder, _ = study
    args = ["segment", "--model", "m.pt", "--study", str(folder), "--output", str(tmp_path / "l.nii.gz")]
    before = tree_state(folder)
    code, _, err = run_cli([*args, "--dicom-seg", str(folder / "S001" / "seg.dcm"), "--progress", "none"], capsys)
    one_error_line(code, err, r"--dicom-seg .* is inside the input folder of study")
    assert tree_state(folder) == before
