"""BraTS 2023 lesion-wise Dice and HD95 (brainsegfounder.lesion_metrics): answers known by
construction, and the public reference code's own numbers on the same label maps.

REFERENCE was produced by running github.com/rachitsaluja/BraTS-2023-Metrics at commit
43c905242b2eecf421d4ab2da7af8ece9777d322 (metrics.py and its bundled surface_distance, not
copied here) in a scratch virtualenv: Python 3.10.13, ``pip install -r requirements.txt``
(connected-components-3d 3.12.1, nibabel 5.1.0, numpy 1.24.3, pandas 1.3.4, scipy 1.11.1).
Each case of brats_lesion_cases.cases() was saved with nibabel as uint8 NIfTI (affine
diag(spacing)) and scored with ``metrics.get_LesionWiseResults(pred, gt, challenge_name)`` for
BraTS-GLI, BraTS-MET and BraTS-MEN; the table keeps LesionWise_Score_Dice (4 decimals),
LesionWise_Score_HD95 (3 decimals), Num_TP, Num_FN and Num_FP per region, and lists MET and
MEN only where they differ from GLI.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from brats_lesion_cases import cases, cube

from brainsegfounder.lesion_metrics import CHALLENGES, MISSING_HD95_MM, lesion_wise

from helpers import ROOT, run_cli
from quick import CPU

REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

# (case, challenge, WT, TC, ET), each region (dice, hd95 mm, TP, FN, FP)
REFERENCE = [
    ("identical", "glioma", (1, 0, 1, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("split", "glioma", (0.9796, 7, 1, 0, 0), (0.9091, 2, 1, 0, 0), (0.9091, 1, 1, 0, 0)),
    ("shifted 2 voxels", "glioma", (0.8333, 2, 1, 0, 0), (0.6667, 2, 1, 0, 0), (0.6667, 2, 1, 0, 0)),
    ("neighbours merged, one found", "glioma", (0.6667, 9, 1, 0, 0), (0.6667, 9, 1, 0, 0), (0.6667, 9, 1, 0, 0)),
    ("neighbours merged, one found", "metastases", (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0)),
    ("neighbours merged, one found", "meningioma", (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0)),
    ("neighbours merged, both found", "glioma", (1, 0, 1, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("neighbours merged, both found", "metastases", (1, 0, 2, 0, 0), (1, 0, 2, 0, 0), (1, 0, 2, 0, 0)),
    ("neighbours merged, both found", "meningioma", (1, 0, 2, 0, 0), (1, 0, 2, 0, 0), (1, 0, 2, 0, 0)),
    ("tiny false positive", "glioma", (0.5, 187, 1, 0, 1), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("false positive 2 voxels away", "glioma", (0.9818, 4, 1, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("false positive 2 voxels away", "metastases", (0.5, 187, 1, 0, 1), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("false positive 2 voxels away", "meningioma", (0.5, 187, 1, 0, 1), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("empty prediction", "glioma", (0, 374, 0, 1, 0), (0, 374, 0, 1, 0), (0, 374, 0, 1, 0)),
    ("empty truth", "glioma", (0, 374, 0, 0, 1), (0, 374, 0, 0, 1), (0, 374, 0, 0, 1)),
    ("both empty", "glioma", (1, 0, 0, 0, 0), (1, 0, 0, 0, 0), (1, 0, 0, 0, 0)),
    ("missed second lesion", "glioma", (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0), (0.5, 187, 1, 1, 0)),
    ("27-voxel lesion missed", "glioma", (1, 0, 1, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("27-voxel lesion missed", "metastases", (0.5, 187, 1, 1, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("27-voxel lesion found", "glioma", (1, 0, 1, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("27-voxel lesion found", "metastases", (1, 0, 2, 0, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    ("one component over two lesions", "glioma", (0.6279, 16, 2, 0, 0), (0.6279, 16, 2, 0, 0), (0.6279, 16, 2, 0, 0)),
    ("1x1x3 mm, shifted one slice", "glioma", (0.9167, 3, 1, 0, 0), (0.8333, 3, 1, 0, 0), (0.6667, 3, 1, 0, 0)),
    ("1x1x3 mm, 20-voxel lesion missed", "glioma", (0.5, 187, 1, 1, 0), (1, 0, 1, 0, 0), (1, 0, 1, 0, 0)),
    (
        "balls, off-centre and resized",
        "glioma",
        (0.8373, 2, 1, 0, 0),
        (0.5907, 2.828, 1, 0, 0),
        (0.5907, 2.828, 1, 0, 0),
    ),
    ("balls, 0.9x1.2x3 mm", "glioma", (0.6803, 3.354, 1, 0, 0), (0.7409, 2.4, 1, 0, 0), (0.7409, 2.4, 1, 0, 0)),
]
CASES = cases()


def _region(labels: np.ndarray, region: str) -> np.ndarray:
    return np.isin(labels, REGIONS[region])


@pytest.mark.parametrize(("case", "rules", "wt", "tc", "et"), REFERENCE, ids=[f"{r[0]}-{r[1]}" for r in REFERENCE])
def test_the_reference_codes_numbers(case, rules, wt, tc, et):
    """Within 0.01 Dice and 0.5 mm HD95 of the public BraTS 2023 code (measured: 4e-5 and 5e-4,
    its rounding), with the same lesion counts."""
    truth, pred, spacing = CASES[case]
    for region, (dice, hd95, tp, fn, fp) in zip(REGIONS, (wt, tc, et), strict=True):
        ours = lesion_wise(_region(pred, region), _region(truth, region), spacing, rules)
        assert ours.dice == pytest.approx(dice, abs=0.01), region
        assert ours.hd95_mm == pytest.approx(hd95, abs=0.5), region
        assert (ours.true_positives, ours.false_negatives, ours.false_positives) == (tp, fn, fp), region


def test_every_constructed_case_is_in_the_reference_table():
    assert {r[0] for r in REFERENCE} == set(CASES)


# The reference code's whole-region scores of the same cases (its Legacy_Dice and Legacy_HD95,
# BraTS-GLI; the same for every challenge), per region (dice, hd95 mm), WT, TC, ET.
GLOBAL_REFERENCE = [
    ("identical", (1, 0), (1, 0), (1, 0)),
    ("split", (0.9796, 7), (0.9091, 2), (0.9091, 1)),
    ("shifted 2 voxels", (0.8333, 2), (0.6667, 2), (0.6667, 2)),
    ("neighbours merged, one found", (0.6667, 9), (0.6667, 9), (0.6667, 9)),
    ("neighbours merged, both found", (1, 0), (1, 0), (1, 0)),
    ("tiny false positive", (0.9922, 0), (1, 0), (1, 0)),
    ("false positive 2 voxels away", (0.9818, 4), (1, 0), (1, 0)),
    ("empty prediction", (0, 374), (0, 374), (0, 374)),
    ("empty truth", (0, 374), (0, 374), (0, 374)),
    ("both empty", (1, 0), (1, 0), (1, 0)),
    ("missed second lesion", (0.6667, 33.91), (0.6667, 35.86), (0.6667, 36.4)),
    ("27-voxel lesion missed", (0.9922, 0), (1, 0), (1, 0)),
    ("27-voxel lesion found", (1, 0), (1, 0), (1, 0)),
    ("one component over two lesions", (0.9558, 3), (0.9558, 3), (0.9558, 3)),
    ("1x1x3 mm, shifted one slice", (0.9167, 3), (0.8333, 3), (0.6667, 3)),
    ("1x1x3 mm, 20-voxel lesion missed", (0.9942, 0), (1, 0), (1, 0)),
    ("balls, off-centre and resized", (0.8373, 2), (0.5907, 2.828), (0.5907, 2.828)),
    ("balls, 0.9x1.2x3 mm", (0.6803, 3.354), (0.7409, 2.4), (0.7409, 2.4)),
]


@pytest.mark.parametrize(("case", "wt", "tc", "et"), GLOBAL_REFERENCE, ids=[r[0] for r in GLOBAL_REFERENCE])
def test_the_whole_region_dice_and_hd95_are_the_reference_codes(case, wt, tc, et):
    """evaluate's dice and hd95_mm for BraTS tasks; MONAI's HD95 was up to 1 mm off (split: 6 vs 7)."""
    from brainsegfounder_training.finetuning.metrics import case_metrics

    truth, pred, spacing = CASES[case]
    names = list(REGIONS)
    p = np.stack([_region(pred, r) for r in names])
    t = np.stack([_region(truth, r) for r in names])
    ours = case_metrics(p, t, spacing, names, lesions=False, brats_hd95=True)
    for region, (dice, hd95) in zip(names, (wt, tc, et), strict=True):
        assert ours[region]["dice"] == pytest.approx(dice, abs=0.01), region
        assert ours[region]["hd95_mm"] == pytest.approx(hd95, abs=0.5), region


def test_settings_per_challenge_are_the_reference_codes():
    """BraTS-GLI/SSA/PED: 3 dilations, lesions <= 50 mm^3 ignored; MEN: 1, 50; MET: 1, 2."""
    settings = {name: (c.dilation, c.min_volume_mm3) for name, c in CHALLENGES.items()}
    assert settings == {
        "glioma": (3, 50),
        "sub-saharan": (3, 50),
        "pediatric": (3, 50),
        "meningioma": (1, 50),
        "metastases": (1, 2),
        "stroke": (1, 2),  # ours: neither BraTS nor ATLAS defines one
    }


def _box(shape=(30, 30, 30)) -> np.ndarray:
    return np.zeros(shape, bool)


def _lesion(voxels: int) -> np.ndarray:
    """A lesion of exactly ``voxels`` voxels (a 1-voxel-thick bar)."""
    a = _box()
    a.flat[
        np.ravel_multi_index((np.full(voxels, 15), np.arange(voxels) // 10 + 5, np.arange(voxels) % 10 + 5), a.shape)
    ] = True
    return a


_TWO = cube(cube(np.zeros((30, 30, 30), np.uint8), (2, 2, 2), 5, 1), (20, 20, 20), 5, 1) > 0
_FIRST = cube(np.zeros((30, 30, 30), np.uint8), (2, 2, 2), 5, 1) > 0


@pytest.mark.parametrize(
    ("story", "pred", "true", "spacing", "rules", "expected"),
    [
        ("both empty", _box(), _box(), (1, 1, 1), "glioma", (1.0, 0.0, 0, 0, 0)),
        ("nothing predicted", _box(), _FIRST, (1, 1, 1), "glioma", (0.0, MISSING_HD95_MM, 0, 1, 0)),
        ("nothing true", _FIRST, _box(), (1, 1, 1), "glioma", (0.0, MISSING_HD95_MM, 0, 0, 1)),
        ("one of two found", _FIRST, _TWO, (1, 1, 1), "glioma", (0.5, MISSING_HD95_MM / 2, 1, 1, 0)),
        ("one true, one false", _TWO, _FIRST, (1, 1, 1), "glioma", (0.5, MISSING_HD95_MM / 2, 1, 0, 1)),
        ("50 voxels: not scored", _box(), _lesion(50), (1, 1, 1), "glioma", (1.0, 0.0, 0, 0, 0)),
        ("51 voxels: scored", _box(), _lesion(51), (1, 1, 1), "glioma", (0.0, MISSING_HD95_MM, 0, 1, 0)),
        ("50 voxels of 1.1 mm^3: scored", _box(), _lesion(50), (1, 1, 1.1), "glioma", (0.0, MISSING_HD95_MM, 0, 1, 0)),
        ("2 voxels, metastases: not scored", _box(), _lesion(2), (1, 1, 1), "metastases", (1.0, 0.0, 0, 0, 0)),
        ("3 voxels, metastases: scored", _box(), _lesion(3), (1, 1, 1), "metastases", (0.0, MISSING_HD95_MM, 0, 1, 0)),
        ("found, 50 voxels: no false positive", _lesion(50), _lesion(50), (1, 1, 1), "glioma", (1.0, 0.0, 0, 0, 0)),
    ],
)
def test_answers_known_by_construction(story, pred, true, spacing, rules, expected):
    scores = lesion_wise(pred, true, spacing, rules)
    dice, hd95, tp, fn, fp = expected
    assert scores.dice == pytest.approx(dice)
    assert scores.hd95_mm == pytest.approx(hd95)
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (tp, fn, fp)


def test_the_measured_defects_of_panoptica_as_a_lesion_dice():
    """A prediction split in two: panoptica's panoptic quality (the old ``lesion_dice``) 0,
    BraTS's lesion Dice the global 0.98. A 27-voxel lesion: panoptica counts it missed
    (recognition quality, the old ``lesion_f1``, 2/3), BraTS ignores it (1.0)."""
    from brainsegfounder_training.finetuning.metrics import case_metrics

    def wt(case):
        truth, pred, spacing = CASES[case]
        region = case_metrics(_region(pred, "WT")[None], _region(truth, "WT")[None], spacing, ["WT"])
        return region["WT"]

    split = wt("split")
    assert split["dice"] == pytest.approx(0.9796, abs=1e-4)
    assert split["panoptic_quality"] == 0.0
    assert split["recognition_quality"] == 0.0
    assert split["brats_lesion_dice"] == pytest.approx(0.9796, abs=1e-4)
    small = wt("27-voxel lesion missed")
    assert small["recognition_quality"] == pytest.approx(2 / 3)
    assert small["panoptic_quality"] == pytest.approx(2 / 3)
    assert small["brats_lesion_dice"] == 1.0
    assert small["brats_lesion_hd95_mm"] == 0.0


def test_the_metric_module_imports_no_torch():
    code = "import sys, brainsegfounder.lesion_metrics; print('torch' in sys.modules, 'monai' in sys.modules)"
    env_path = f"{ROOT / 'BrainSegFounderSlicer'}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=env_path)
    assert out.stdout.split() == ["False", "False"]


def test_the_cli_takes_every_challenge(monkeypatch):
    from brainsegfounder.cli import build_parser

    monkeypatch.setenv("BRAINSEGFOUNDER_COMMANDS", "brainsegfounder_training.commands:register")
    parser = build_parser()
    for name in CHALLENGES:
        args = parser.parse_args(["evaluate", "--data", "d", "--out", "o", "--brats-challenge", name])
        assert args.brats_challenge == name


def _brats2023_folder(root, names):
    """The named cases as a BraTS 2023 folder (its layout says ET = 3) and a prediction folder,
    written by SimpleITK: arrays (z, y, x), spacing (x, y, z)."""
    (root / "pred").mkdir(parents=True)
    for i, name in enumerate(names):
        truth, pred, spacing = CASES[name]
        case = f"BraTS-GLI-{i:05d}-000"
        (root / "data" / case).mkdir(parents=True)
        for tag, array in [*((t, (truth > 0) * 100 + 10) for t in ("t2f", "t1c", "t1n", "t2w")), ("seg", truth)]:
            image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8))
            image.SetSpacing(spacing)
            sitk.WriteImage(image, str(root / "data" / case / f"{case}-{tag}.nii.gz"))
        image = sitk.GetImageFromArray(np.ascontiguousarray(pred.transpose(2, 1, 0)))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(root / "pred" / f"{case}.nii.gz"))
    return root / "data", root / "pred"


@pytest.mark.parametrize(("rules", "expected"), [("glioma", (0.6667, 9)), ("metastases", (0.5, 187))])
def test_evaluate_writes_the_brats_columns(tmp_path, capsys, rules, expected):
    """metrics.csv and summary.json carry the BraTS lesion-wise columns beside panoptica's,
    from files on disk (axes and spacing as SimpleITK orders them), with --brats-challenge."""
    data, pred = _brats2023_folder(tmp_path, ["neighbours merged, one found", "balls, 0.9x1.2x3 mm"])
    code, out, err = run_cli(
        ["evaluate", "--data", data, "--pred", pred, "--out", tmp_path / "out", "--brats-challenge", rules, *CPU],
        capsys,
    )
    assert code == 0, err
    assert "lesion Dice" in out
    rows = {(r["case_id"], r["region"]): r for r in csv.DictReader((tmp_path / "out" / "metrics.csv").open())}
    for column in ("brats_lesion_dice", "brats_lesion_hd95_mm", "panoptic_quality", "recognition_quality"):
        assert column in rows["BraTS-GLI-00000-000", "WT"]
    merged = rows["BraTS-GLI-00000-000", "ET"]
    assert float(merged["brats_lesion_dice"]) == pytest.approx(expected[0], abs=0.01)
    assert float(merged["brats_lesion_hd95_mm"]) == pytest.approx(expected[1], abs=0.5)
    balls = rows["BraTS-GLI-00001-000", "WT"]  # the reference's 0.6803, 3.354 mm at 0.9 x 1.2 x 3 mm
    assert float(balls["brats_lesion_dice"]) == pytest.approx(0.6803, abs=0.01)
    assert float(balls["brats_lesion_hd95_mm"]) == pytest.approx(3.354, abs=0.5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lesion_rules"]["challenge"] == rules
    assert summary["label_convention"] == "brats2023"
    assert "brats_lesion_dice" in summary["regions"]["ET"]
