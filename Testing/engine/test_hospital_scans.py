"""Preprocessing of hospital scans (model_space.py): co-registration, thick slices, brain
extraction, the QC picture and the warnings."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import one_error_line, run_cli, segment_args


def _read(path) -> sitk.Image:
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_a_moved_thick_contrast_is_recovered_to_under_1mm_at_brain_voxels(brats_inputs):
    from brainsegfounder.registration import rigid_register
    from brainsegfounder.synth import hospital

    inputs = dict(brats_inputs[0])
    flair, t1 = _read(inputs["flair"]), _read(inputs["t1"])
    truth = hospital.rigid(hospital.center_of(flair), (4, -3, 5), (4, -3, 2.5))
    # the T1 moved, and acquired with slices twice as thick
    thick = hospital.thick_grid(t1, 2 * t1.GetSpacing()[2])
    moved = hospital.moved(hospital.slice_profile(t1, thick.GetSpacing()[2]), truth, thick)
    result = rigid_register(flair, moved)
    brain = np.argwhere(sitk.GetArrayFromImage(flair) > 0)[::7]
    points = np.array([flair.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in brain])
    error = np.linalg.norm(
        np.array([result.transform.TransformPoint(p) for p in points])
        - np.array([truth.TransformPoint(p) for p in points]),
        axis=1,
    )
    before = np.linalg.norm(np.array([truth.TransformPoint(p) for p in points]) - points, axis=1)
    assert before.mean() > 5  # the motion was there to recover
    assert error.mean() < 1.0, error.mean()
    assert error.max() < 1.5, error.max()
    assert result.metric_after < result.metric_before


@pytest.mark.slow
def test_the_offline_brain_extraction_finds_colin27s_brain():
    from brainsegfounder import brain_extraction
    from brainsegfounder.synth import hospital

    head_brain = hospital.colin27()
    if head_brain is None:
        pytest.skip(f"no Colin27 head here: {hospital.COLIN27_HINT}")
    if not brain_extraction.available():
        pytest.skip(f"deepbet is not installed: {brain_extraction.INSTALL_HINT}")
    head, brain = head_brain
    mask = brain_extraction.extract_brain(head)
    assert mask.GetSize() == head.GetSize()
    assert mask.GetOrigin() == head.GetOrigin()
    dice = _dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(brain) > 0)
    assert dice >= 0.95, dice


def test_skull_stripped_scans_are_told_from_heads(brats_inputs):
    from brainsegfounder.brain_extraction import looks_stripped
    from brainsegfounder.synth import hospital

    flair = _read(dict(brats_inputs[0])["flair"])
    assert looks_stripped(flair).stripped
    noisy = flair + 1.0  # a noise floor: no exact zeros left
    assert not looks_stripped(noisy).stripped
    head_brain = hospital.colin27()
    if head_brain is not None:
        head, brain = head_brain
        assert not looks_stripped(head).stripped  # zeros outside, but 4 L of head
        assert looks_stripped(brain).stripped


@pytest.mark.slow
def test_the_qc_picture_and_the_preprocessing_report_are_written(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    t2 = _read(inputs[3][1])
    sitk.WriteImage(sitk.Resample(t2, hospital_grid(t2)), str(tmp_path / "t2.nrrd"))  # t2 on its own grid
    given = [*inputs[:3], ("t2", str(tmp_path / "t2.nrrd"))]
    qc, summary_path = tmp_path / "qc.png", tmp_path / "s.json"
    args = segment_args(brats_model, given, tmp_path / "out.nii.gz", "--qc", qc, "--summary", summary_path)
    code, _, err = run_cli([*args, "--skip-brain-extraction"], capsys)
    assert code == 0, err
    assert qc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert qc.stat().st_size > 10_000
    summary = json.loads(summary_path.read_text())
    report = summary["preprocessing"]
    assert report["reference"] == "flair"
    assert not report["inputs_share_one_grid"]
    assert report["brain_extraction"]["done"] == "skipped (--skip-brain-extraction)"
    assert set(report["registration"]) == {"t1ce", "t1", "t2"}
    # the inputs of one grid are where they were: the registration moved them well under a voxel
    assert report["registration"]["t1"]["moved_mm_mean"] < 1.0
    assert {"register_s", "resample_s", "preprocess_s"} <= set(summary["timings_s"])


def hospital_grid(image: sitk.Image) -> sitk.Image:
    """A coarser grid over the same field of view (in-plane 1.5x the voxel, slices 2x)."""
    spacing = np.array(image.GetSpacing()) * (1.5, 1.5, 2.0)
    size = [max(1, int(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(tuple(spacing))
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.GetOrigin())
    return grid


@pytest.mark.slow
def test_the_preprocessing_is_skipped_for_brats_like_inputs_and_can_be_turned_off(
    tmp_path, capsys, brats_model, brats_inputs
):
    inputs, _ = brats_inputs
    outputs = {}
    for flag in ([], ["--no-preprocess"]):
        summary_path = tmp_path / f"s{len(flag)}.json"
        output = tmp_path / f"out{len(flag)}.nii.gz"
        code, _, err = run_cli(segment_args(brats_model, inputs, output, "--summary", summary_path, *flag), capsys)
        assert code == 0, err
        outputs[len(flag)] = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
        report = json.loads(summary_path.read_text())["preprocessing"]
        if flag:
            assert report == {"mode": "off"}
        else:
            assert report["looks_preprocessed"]
            assert report["registration"].startswith("skipped")
            assert report["brain_extraction"]["done"].startswith("skipped")
    assert np.array_equal(outputs[0], outputs[1])  # BraTS-like: the same result either way


def test_a_duplicated_sequence_is_warned_about(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    given = [(m, inputs[2][1] if m == "t1ce" else p) for m, p in inputs]  # the T1 given as T1ce too
    code, out, err = run_cli(segment_args(brats_model, given, tmp_path / "out.nii.gz"), capsys)
    assert code == 0, err
    assert "warning: duplicated sequence: t1ce and t1 are the same scan" in out


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--reference", "dwi"], r"--reference dwi is not one of the model's inputs \(flair, t1ce, t1, t2\)"),
        (["--qc", "qc.jpg"], r"--qc .*qc\.jpg must end in \.png"),
        (["--preprocess", "sometimes"], r"invalid choice: 'sometimes'"),
    ],
)
def test_bad_preprocessing_options_give_one_clear_line(tmp_path, capsys, brats_model, brats_inputs, extra, pattern):
    inputs, _ = brats_inputs
    try:
        code, _, err = run_cli(segment_args(brats_model, inputs, tmp_path / "out.nii.gz", *extra), capsys)
    except SystemExit as exit_:  # argparse's own refusal
        code, err = exit_.code, capsys.readouterr().err
        assert code == 2
        assert re.search(pattern, err), err
        return
    one_error_line(code, err, pattern)
    assert not (tmp_path / "out.nii.gz").exists()


class _Registration:
    def __init__(self, metric_after=-0.8, moved=3.0, turned=2.0):
        self.metric_after, self.shift_mm_mean, self.rotation_deg = metric_after, moved, turned


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (_Registration(), None),
        (_Registration(metric_after=-0.05), "poor match after registration"),
        (_Registration(moved=22.0), "moved 22 mm on average"),
        (_Registration(turned=30.0), "turned 30 degrees"),
    ],
)
def test_a_contrast_that_did_not_co_register_is_warned_about(result, expected):
    from brainsegfounder.case_warnings import registration_warnings

    warnings = registration_warnings("t1ce", "flair", result)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert expected in warnings[0]
        assert warnings[0].startswith("t1ce may not have")


@pytest.mark.parametrize(
    ("segmented", "brain", "outside", "expected"),
    [
        (40.0, 1400.0, 0.0, []),
        (800.0, 1400.0, 0.0, ["fills 57% of the brain"]),
        (40.0, None, 0.2, ["20% of what the model labelled lay outside the brain"]),
        (900.0, 1400.0, 0.3, ["fills 64%", "30% of what"]),
    ],
)
def test_an_implausible_result_is_warned_about(segmented, brain, outside, expected):
    from brainsegfounder.case_warnings import result_warnings

    warnings = result_warnings(segmented, brain, outside)
    assert len(warnings) == len(expected)
    for warning, text in zip(warnings, expected, strict=True):
        assert text in warning
        assert warning.startswith("implausible result")


def test_thick_slices_are_warned_about_and_isotropic_ones_are_not():
    from brainsegfounder.case_warnings import input_warnings

    def image(spacing):
        im = sitk.Image([8, 8, 8], sitk.sitkFloat32)
        im.SetSpacing(spacing)
        return im

    warnings = input_warnings({"flair": image((0.9, 0.9, 5.0)), "t1": image((1, 1, 1)), "t2": image((1, 1, 3))})
    assert len(warnings) == 1
    assert warnings[0].startswith("thick slices: flair has 0.9x0.9x5 mm voxels (5.6 times")


@pytest.mark.slow
def test_a_batch_of_hospital_scans_is_preprocessed_and_segmented_on_the_flairs_grid(tmp_path, capsys):
    """segment-batch on a study as a scanner gives it: skull and scalp, T1ce / T1 / T2 moved by
    4-5 degree turns and 2-4 mm shifts, the FLAIR with 5 mm slices (the demo model, 2 mm), beside
    the same case clean (one 2 mm grid, skull-stripped: taken as it is) and the hospital case as
    a DICOM study. Each contrast of the
    hospital case is co-registered, the skull stripped, the result written on the FLAIR's own
    5 mm grid with a QC picture (5 mm against 2 mm is under the thick-slice warning's ratio of 3).
    It matches the clean case's result resampled there (Dice >= 0.9) and the truth (>= 0.9 per
    region; measured 0.995 / 0.973 / 0.997); with --no-preprocess it does not (0.11 / 0.16 / 0.13)."""
    from brainsegfounder import brain_extraction
    from brainsegfounder.demo import DEMO_MODEL, dice_per_region
    from brainsegfounder.labels import schema
    from brainsegfounder.synth import hospital

    if hospital.colin27() is None:
        pytest.skip(f"no Colin27 head here: {hospital.COLIN27_HINT}")
    if not brain_extraction.available():
        pytest.skip(f"deepbet is not installed: {brain_extraction.INSTALL_HINT}")
    from brainsegfounder.synth.dicom import write_study

    clean, scans, truth_path = hospital.write_hospital_case(tmp_path / "case", 2.0)
    cases = tmp_path / "cases"
    # the same scans as the scanner's DICOM study (GE's spellings, a localizer beside them)
    write_study({m: _read(p) for m, p in scans.items()}, cases / "patient-1-dicom", "ge", extras=("localizer",))
    for case, files in (("patient-1", scans), ("clean-1", clean)):  # folders of files named by contrast
        (cases / case).mkdir(parents=True)
        for name, path in files.items():
            path.rename(cases / case / f"{case}_{name}.nii.gz")
    (tmp_path / "raw-cases").mkdir()
    (tmp_path / "raw-cases" / "patient-1").symlink_to(cases / "patient-1")  # the hospital case alone
    runs = {}
    for run, where, flags in (("pre", cases, ["--qc"]), ("raw", tmp_path / "raw-cases", ["--no-preprocess"])):
        out = tmp_path / run
        args = ["segment-batch", "--model", str(DEMO_MODEL), "--cases", str(where), "--out", str(out)]
        code, _, err = run_cli([*args, "--device", "cpu", *flags], capsys)
        assert code == 0, err
        runs[run] = out
    summary = json.loads((runs["pre"] / "patient-1" / "summary.json").read_text())
    report = summary["preprocessing"]
    assert report["reference"] == "flair"
    assert set(report["registration"]) == {"t1ce", "t1", "t2"}
    assert all(r["moved_mm_mean"] > 2 for r in report["registration"].values())  # the motion was found
    assert report["brain_extraction"]["done"].startswith("deepbet")
    clean_report = json.loads((runs["pre"] / "clean-1" / "summary.json").read_text())["preprocessing"]
    assert clean_report["looks_preprocessed"]
    assert (runs["pre"] / "patient-1" / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (runs["raw"] / "patient-1" / "qc.png").exists()
    rows = {r["case_id"]: r for r in csv.DictReader((runs["pre"] / "results.csv").open())}
    assert {k: r["status"] for k, r in rows.items()} == {"patient-1": "ok", "clean-1": "ok", "patient-1-dicom": "ok"}

    flair = sitk.ReadImage(str(cases / "patient-1" / "patient-1_flair.nii.gz"))

    def on_flair(path, interpolator=sitk.sitkNearestNeighbor):
        return sitk.Resample(sitk.ReadImage(str(path)), flair, sitk.Transform(), interpolator)

    truth = on_flair(truth_path)
    dice = {}
    for run, out in runs.items():
        result = sitk.ReadImage(str(out / "patient-1" / "labels.nii.gz"))
        assert result.GetSize() == flair.GetSize()
        assert result.GetSpacing() == pytest.approx(flair.GetSpacing())  # on the FLAIR's own 5 mm grid
        dice[run] = dice_per_region(result, truth, schema("brats_regions"))
    print("Dice TC/WT/ET with and without preprocessing:", dice)  # shown with -s
    assert min(dice["pre"].values()) >= 0.9, dice
    assert max(dice["raw"].values()) < 0.5, dice
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(runs["pre"] / "patient-1" / "labels.nii.gz")))
    theirs = sitk.GetArrayFromImage(on_flair(runs["pre"] / "clean-1" / "labels.nii.gz"))
    assert np.count_nonzero(theirs) > 100
    assert _dice(ours > 0, theirs > 0) >= 0.9  # whole tumour, against the clean case's result
    assert _dice(np.isin(ours, (1, 4)), np.isin(theirs, (1, 4))) >= 0.9  # tumour core
    # the DICOM study: its series picked from the headers, the same preprocessing, the same result
    study = json.loads((runs["pre"] / "patient-1-dicom" / "summary.json").read_text())
    assert set(study["study"]["chosen"]) == {"flair", "t1ce", "t1", "t2"}
    assert study["preprocessing"]["brain_extraction"]["done"].startswith("deepbet")
    from_dicom = sitk.ReadImage(str(runs["pre"] / "patient-1-dicom" / "labels.nii.gz"))
    assert from_dicom.GetSize() == flair.GetSize()
    from_dicom = sitk.GetArrayFromImage(from_dicom)
    assert _dice(from_dicom > 0, ours > 0) >= 0.97, _dice(from_dicom > 0, ours > 0)  # int16 voxels, not float
