"""DICOM in: a study's series identified from their headers, the choice shown and overridable,
bad studies refused in one line. Synthetic studies carry the headers as the vendors write them
(brainsegfounder.synth.dicom); the identification table covers Siemens, GE, Philips and Canon
spellings in several languages."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from brainsegfounder.dicom_study import Series, identify, read_study, study_inputs
from brainsegfounder.errors import UserError
from brainsegfounder.synth.dicom import VENDORS, write_study

from helpers import one_error_line, run_cli, tree_state

MODALITIES = ("flair", "t1ce", "t1", "t2")

# (vendor, SeriesDescription, SequenceName, ScanningSequence, TR, TE, TI, ContrastBolusAgent,
#  ImageType, expected: a contrast or "excluded")
IDENTIFICATION_TABLE = [
    # Siemens (syngo protocol names; German "KM" = Kontrastmittel, "nativ" = before contrast)
    ("siemens", "t2_tirm_tra_dark-fluid", "*tir2d1_15", "SE\\IR", 9000, 81, 2500, "", "ORIGINAL\\PRIMARY", "flair"),
    ("siemens", "t2_spc_da-fl_sag_p2_iso", "*spcir_278", "SE\\IR", 5000, 387, 1800, "", "ORIGINAL\\PRIMARY", "flair"),
    ("siemens", "t1_mprage_sag_p2_iso", "*tfl3d1_16ns", "GR\\IR", 2300, 2.98, 900, "", "ORIGINAL\\PRIMARY", "t1"),
    ("siemens", "t1_mprage_sag_nativ", "*tfl3d1_16ns", "GR\\IR", 2300, 2.98, 900, "", "ORIGINAL\\PRIMARY", "t1"),
    ("siemens", "t1_mprage_tra_KM", "*tfl3d1_16ns", "GR\\IR", 2300, 2.98, 900, "", "ORIGINAL\\PRIMARY", "t1ce"),
    ("siemens", "t1_se_tra", "*se2d1", "SE", 500, 9.1, None, "Dotarem", "ORIGINAL\\PRIMARY", "t1ce"),
    ("siemens", "t2_tse_tra_512", "*tse2d1_15", "SE", 5000, 98, None, "", "ORIGINAL\\PRIMARY", "t2"),
    ("siemens", "AAHead_Scout_32ch-head-coil", "*fl2d1", "GR", 8.6, 4, None, "", "ORIGINAL\\PRIMARY", "excluded"),
    ("siemens", "localizer", "*fl2d1", "GR", 8.6, 4, None, "", "ORIGINAL\\PRIMARY", "excluded"),
    (
        "siemens",
        "t1_mprage_sag_p2_iso_MPR_tra",
        "*tfl3d1",
        "GR\\IR",
        2300,
        3,
        900,
        "",
        "DERIVED\\SECONDARY",
        "excluded",
    ),
    ("siemens", "ep2d_diff_3scan_trace_p2", "*ep_b1000t", "EP", 5300, 91, None, "", "ORIGINAL\\PRIMARY", "excluded"),
    (
        "siemens",
        "ep2d_diff_3scan_trace_p2_ADC",
        "*ep_b0_1000",
        "EP",
        5300,
        91,
        None,
        "",
        "DERIVED\\PRIMARY",
        "excluded",
    ),
    ("siemens", "t2_swi_tra_p2_2mm", "*swi3d1r", "GR", 27, 20, None, "", "ORIGINAL\\PRIMARY", "excluded"),
    # GE (descriptions as technologists type them; "+C" post-contrast)
    ("ge", "Ax T2 FLAIR", "", "SE\\IR", 9000, 120, 2250, "", "ORIGINAL\\PRIMARY\\OTHER", "flair"),
    ("ge", "Sag T2 FLAIR CUBE", "", "SE\\IR", 6000, 130, 1850, "", "ORIGINAL\\PRIMARY\\OTHER", "flair"),
    ("ge", "Sag 3D T1 BRAVO", "efgre3d", "GR\\IR", 8.2, 3.2, 450, "", "ORIGINAL\\PRIMARY\\OTHER", "t1"),
    ("ge", "Ax 3D T1 BRAVO +C", "efgre3d", "GR\\IR", 8.2, 3.2, 450, "10 ML GADAVIST", "ORIGINAL\\PRIMARY", "t1ce"),
    ("ge", "AX T1 SE POST", "", "SE", 600, 10, None, "", "ORIGINAL\\PRIMARY\\OTHER", "t1ce"),
    ("ge", "Ax T1 FLAIR", "", "SE\\IR", 2000, 10, 800, "", "ORIGINAL\\PRIMARY\\OTHER", "t1"),
    ("ge", "Ax T2 FSE", "", "SE", 4500, 102, None, "", "ORIGINAL\\PRIMARY\\OTHER", "t2"),
    ("ge", "3-Plane Loc", "", "GR", 4.9, 1.5, None, "", "ORIGINAL\\PRIMARY\\LOCALIZER", "excluded"),
    ("ge", "ASSET Cal", "", "GR", 150, 1.1, None, "", "ORIGINAL\\PRIMARY\\OTHER", "excluded"),
    ("ge", "Ax DWI", "", "EP", 6000, 75, None, "", "ORIGINAL\\PRIMARY\\OTHER", "excluded"),
    ("ge", "Ax T2* GRE", "", "GR", 650, 20, None, "", "ORIGINAL\\PRIMARY\\OTHER", "excluded"),
    # Philips (ExamCard names; "+Gd", "sT1W")
    ("philips", "T2W_FLAIR_SENSE", "", "IR", 11000, 125, 2800, "", "ORIGINAL\\PRIMARY\\M_IR\\M\\IR", "flair"),
    ("philips", "3D_Brain_VIEW_FLAIR_SHC", "", "IR", 4800, 340, 1650, "", "ORIGINAL\\PRIMARY\\M_IR\\M\\IR", "flair"),
    ("philips", "T1W_3D_TFE", "", "GR", 8.1, 3.7, None, "", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", "t1"),
    ("philips", "sT1W_3D_TFE +Gd", "", "GR", 8.1, 3.7, None, "", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", "t1ce"),
    ("philips", "T1W_SE_GD", "", "SE", 550, 10, None, "", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", "t1ce"),
    ("philips", "T2W_TSE", "", "SE", 3000, 80, None, "", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", "t2"),
    ("philips", "Survey_SHC", "", "GR", 11, 4.6, None, "", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", "excluded"),
    ("philips", "DWI_SENSE", "", "SE", 3500, 90, None, "", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", "excluded"),
    # Canon / Toshiba, and other languages (French, Spanish, Italian)
    ("canon", "FLAIR_AX", "", "IR", 10000, 105, 2600, "", "ORIGINAL\\PRIMARY", "flair"),
    ("canon", "T1_SE_AX", "", "SE", 520, 12, None, "", "ORIGINAL\\PRIMARY", "t1"),
    ("canon", "T2_FSE_AX", "", "SE", 4200, 100, None, "", "ORIGINAL\\PRIMARY", "t2"),
    ("siemens", "T1 3D APRES INJECTION GADO", "*tfl3d1", "GR\\IR", 2300, 3, 900, "", "ORIGINAL\\PRIMARY", "t1ce"),
    ("siemens", "T1 3D SANS INJECTION", "*tfl3d1", "GR\\IR", 2300, 3, 900, "", "ORIGINAL\\PRIMARY", "t1"),
    ("ge", "T1 AXIAL CON CONTRASTE", "", "SE", 550, 10, None, "", "ORIGINAL\\PRIMARY", "t1ce"),
    ("ge", "T1 AXIAL SIN CONTRASTE", "", "SE", 550, 10, None, "", "ORIGINAL\\PRIMARY", "t1"),
    ("philips", "T1 POST MDC", "", "SE", 550, 10, None, "", "ORIGINAL\\PRIMARY", "t1ce"),
    # no description: the timing alone
    ("ge", "", "", "SE\\IR", 9000, 120, 2200, "", "ORIGINAL\\PRIMARY", "flair"),
    ("ge", "", "", "SE", 4000, 100, None, "", "ORIGINAL\\PRIMARY", "t2"),
    ("ge", "", "", "SE", 500, 10, None, "", "ORIGINAL\\PRIMARY", "t1"),
]


def _series(description, sequence, scanning, tr, te, ti, agent, image_type):
    return Series(
        uid="1.2.3",
        number=1,
        description=description,
        protocol=description,
        sequence=sequence,
        modality="MR",
        sop_class="1.2.840.10008.5.1.4.1.1.4",
        body_part="HEAD",
        image_type=tuple(image_type.split("\\")),
        scanning=tuple(scanning.split("\\")),
        tr=tr,
        te=te,
        ti=ti,
        agent=agent,
        spacing=(1.0, 1.0, 1.0),
        rows=256,
        columns=256,
        files=[f"f{i}" for i in (1, 2, 3) if "loc" not in description.lower()] * 20,
        orientations={(1, 0, 0, 0, 1, 0)},
    )


@pytest.mark.parametrize(
    ("vendor", "description", "sequence", "scanning", "tr", "te", "ti", "agent", "image_type", "expected"),
    IDENTIFICATION_TABLE,
    ids=[f"{row[0]}-{row[1] or 'timing-only'}-{row[9]}" for row in IDENTIFICATION_TABLE],
)
def test_a_series_is_identified_from_its_headers_in_each_vendors_spelling(
    vendor, description, sequence, scanning, tr, te, ti, agent, image_type, expected
):
    identity = identify(_series(description, sequence, scanning, tr, te, ti, agent, image_type))
    got = "excluded" if identity.excluded else identity.contrast
    assert got == expected, (identity.excluded, identity.reasons)
    assert identity.excluded or identity.reasons  # every choice has a reason to show


def test_the_table_covers_at_least_three_vendors_and_every_contrast():
    vendors = {row[0] for row in IDENTIFICATION_TABLE}
    assert {"siemens", "ge", "philips"} <= vendors
    for vendor in ("siemens", "ge", "philips"):
        assert {row[9] for row in IDENTIFICATION_TABLE if row[0] == vendor} >= {*MODALITIES, "excluded"}


@pytest.fixture(scope="module")
def case_images(brats_inputs):
    inputs, _ = brats_inputs
    return {m: sitk.ReadImage(p) for m, p in inputs}


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_a_synthetic_study_of_each_vendor_gives_the_four_contrasts(tmp_path, case_images, vendor):
    uids = write_study(case_images, tmp_path / "study", vendor, flat=vendor == "ge")
    study = read_study(tmp_path / "study")
    messages = []
    inputs, summary = study_inputs(study, MODALITIES, progress=lambda *a: messages.append(a[3] if len(a) > 3 else ""))
    assert {m: p.choice.series.uid for m, p in inputs} == {m: uids[m] for m in MODALITIES}
    excluded = {i.series.uid: i.excluded for i in study.identities if i.excluded}
    assert set(excluded) == {uids["localizer"], uids["mpr"], uids["dwi"]}
    assert "localizer" in excluded[uids["localizer"]]
    assert "derived" in excluded[uids["mpr"]]
    assert all(m.startswith(tuple(MODALITIES)) and ": " in m for m in messages if m)  # the choice and why
    assert set(summary["chosen"]) == set(MODALITIES)


def test_the_finer_of_two_equally_named_series_is_chosen_and_the_reason_says_so(tmp_path, case_images):
    thick = sitk.Resample(
        case_images["t1"],
        [case_images["t1"].GetSize()[0], case_images["t1"].GetSize()[1], case_images["t1"].GetSize()[2] // 2],
        sitk.Transform(),
        sitk.sitkLinear,
        case_images["t1"].GetOrigin(),
        [*case_images["t1"].GetSpacing()[:2], case_images["t1"].GetSpacing()[2] * 2],
        case_images["t1"].GetDirection(),
    )
    images = {**case_images, "t1": thick}
    uids = write_study(images, tmp_path / "study", "siemens", extras=(("t1", case_images["t1"]),))
    # the second "t1" series (the extra) repeats the first T1's headers on the case's own 3 mm grid
    study = read_study(tmp_path / "study")
    t1 = [i for i in study.identities if i.contrast == "t1"]
    assert len(t1) == 2
    inputs, _ = study_inputs(study, MODALITIES)
    chosen = dict(inputs)["t1"].choice
    assert chosen.series.uid == uids["t1"]  # the extra, written last, has the finer grid
    assert "finer voxels" in chosen.reason


def test_a_series_can_be_chosen_by_uid_or_number(tmp_path, case_images):
    uids = write_study(case_images, tmp_path / "study", "philips")
    study = read_study(tmp_path / "study")
    inputs, summary = study_inputs(study, MODALITIES, overrides=[("t1", uids["t1ce"]), ("t1ce", "3")])
    assert dict(inputs)["t1"].choice.series.uid == uids["t1ce"]
    assert dict(inputs)["t1ce"].choice.series.uid == uids["t1"]  # series 3 is the plain T1
    assert summary["chosen"]["t1"]["reason"] == "chosen with --series"
    with pytest.raises(UserError, match=r"--series flair=99: no series with that UID or number"):
        study_inputs(study, MODALITIES, overrides=[("flair", "99")])


# ---- bad studies: one clear line each, exit 2, nothing written ------------------------------


def _segment_study(model, study, out, *extra):
    return [
        "segment",
        "--model",
        str(model),
        "--study",
        str(study),
        "--output",
        str(out / "labels.nii.gz"),
        "--summary",
        str(out / "summary.json"),
        "--progress",
        "none",
        "--runtime",
        "torch",
        "--device",
        "cpu",
        *extra,
    ]


def _refused(capsys, tmp_path, args, pattern):
    before = tree_state(tmp_path)
    code, _, err = run_cli(args, capsys)
    one_error_line(code, err, pattern)
    assert tree_state(tmp_path) == before
    assert not (tmp_path / "out").exists()


def test_a_study_without_flair_is_refused(tmp_path, capsys, brats_model, case_images):
    write_study({m: case_images[m] for m in ("t1ce", "t1", "t2")}, tmp_path / "study", "ge")
    _refused(
        capsys,
        tmp_path,
        _segment_study(brats_model, tmp_path / "study", tmp_path / "out"),
        r"has no FLAIR series \(found: .*\); give one with --series flair=SERIES_UID",
    )


def test_two_t1_series_with_equal_evidence_are_not_guessed_between(tmp_path, capsys, brats_model, case_images):
    write_study(case_images, tmp_path / "study", "siemens", extras=("t1",))
    _refused(
        capsys,
        tmp_path,
        _segment_study(brats_model, tmp_path / "study", tmp_path / "out"),
        r"has two T1 series with equal evidence: series 3 .* and series 5 .*; choose one with --series t1=UID",
    )


def test_a_study_that_is_not_of_a_brain_is_refused_before_the_model_loads(tmp_path, capsys, case_images):
    write_study(case_images, tmp_path / "study", "philips", body_part="KNEE")
    args = _segment_study(tmp_path / "no-model.pt", tmp_path / "study", tmp_path / "out")
    _refused(capsys, tmp_path, args, r"is not a brain MRI: series 1 'T2W_FLAIR_SENSE' is body part KNEE")


def test_a_brain_series_chosen_by_hand_must_be_a_brain_series(tmp_path, case_images):
    write_study(case_images, tmp_path / "study", "siemens", extras=())
    knee = tmp_path / "study" / "S005"
    write_study({"t2": case_images["t2"]}, tmp_path / "knee", "siemens", extras=(), body_part="KNEE", seed=7)
    (tmp_path / "knee" / "S001").rename(knee)
    study = read_study(tmp_path / "study")
    [knee_series] = [s for s in study.series if s.body_part == "KNEE"]
    with pytest.raises(UserError, match="is not a brain series"):
        study_inputs(study, MODALITIES, overrides=[("t2", knee_series.uid)])


@pytest.mark.parametrize("damage", ["header", "pixels"])
def test_a_damaged_dicom_file_is_named_in_one_line(tmp_path, capsys, case_images, damage):
    write_study(case_images, tmp_path / "study", "ge")
    victim = tmp_path / "study" / "S002" / "IM0007"
    data = victim.read_bytes()
    victim.write_bytes(data[:200] + b"\xff" * 37 if damage == "header" else data[: len(data) - 1000])
    args = _segment_study(tmp_path / "no-model.pt", tmp_path / "study", tmp_path / "out")
    _refused(capsys, tmp_path, args, r"study .*: S002/IM0007 is a damaged DICOM file .*; export the study again")


def test_the_study_command_lists_every_series_with_its_reason(tmp_path, capsys, case_images):
    write_study(case_images, tmp_path / "study", "ge")
    code, out, _ = run_cli(["study", str(tmp_path / "study"), "--progress", "none"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("7 series in")
    assert "FLAIR ('flair' in its description; long inversion time" in lines[1]
    assert "excluded: localizer" in out


def test_segment_with_a_study_names_the_chosen_series_in_the_summary(tmp_path, capsys, brats_model, case_images):
    uids = write_study(case_images, tmp_path / "study", "siemens")
    code, _, err = run_cli(_segment_study(brats_model, tmp_path / "study", tmp_path / "out"), capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {m: c["series_uid"] for m, c in summary["study"]["chosen"].items()} == {m: uids[m] for m in MODALITIES}
    assert "dark fluid" in summary["study"]["chosen"]["flair"]["reason"]
    assert "UID " + uids["flair"] in summary["inputs"]["flair"]["path"]
