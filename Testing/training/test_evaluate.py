"""Evaluation numbers agree with MONAI (and panoptica) on label maps with known answers."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from brainsegfounder.errors import UserError

from helpers import run_cli
from quick import CPU

SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm: HD95 must use it


def _write(array_zyx, path, spacing=SPACING):
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _known_case(root):
    """Truth: a 10^3 whole tumour with a 4^3 enhancing core (ET=4) and a second small lesion;
    prediction: the whole tumour shifted by 2 voxels in x, no second lesion, the same core."""
    truth = np.zeros((24, 40, 40), np.uint8)
    truth[5:15, 10:20, 10:20] = 2
    truth[8:12, 13:17, 13:17] = 4
    truth[18:21, 30:33, 30:33] = 2
    pred = np.zeros_like(truth)
    pred[5:15, 10:20, 12:22] = 2
    pred[8:12, 13:17, 13:17] = 4
    case = root / "data" / "BraTS2021_00001"
    case.mkdir(parents=True)
    for tag in ("flair", "t1ce", "t1", "t2"):
        _write((truth > 0) * 100 + 10, case / f"BraTS2021_00001_{tag}.nii.gz")
    _write(truth, case / "BraTS2021_00001_seg.nii.gz")
    (root / "pred").mkdir()
    _write(pred, root / "pred" / "BraTS2021_00001.nii.gz")
    return truth, pred


def test_metrics_match_monai_and_known_values(tmp_path):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from brainsegfounder.labels import schema
    from brainsegfounder.lesion_metrics import surface_hd95
    from brainsegfounder_training.finetuning.evaluate import evaluate

    truth, pred = _known_case(tmp_path)
    summary = evaluate(str(tmp_path / "data"), str(tmp_path / "out"), pred=str(tmp_path / "pred"))
    rows = {r["region"]: r for r in csv.DictReader(io.StringIO((tmp_path / "out" / "metrics.csv").read_text()))}
    assert summary["cases"] == 1
    assert set(rows) == {"TC", "WT", "ET"}

    s = schema("brats_regions")
    t = torch.as_tensor(s.labels_to_regions(truth))[None].float()
    p = torch.as_tensor(s.labels_to_regions(pred))[None].float()
    dice = DiceMetric(include_background=True, reduction="none")(p, t)[0]
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
        p, t, spacing=list(SPACING[::-1])
    )[0]
    for i, region in enumerate(("TC", "WT", "ET")):
        assert float(rows[region]["dice"]) == pytest.approx(float(dice[i]), abs=1e-4)
        # a BraTS task's HD95 is BraTS's own (surface elements weighted by area), not MONAI's
        brats = surface_hd95(p[0, i].numpy() > 0, t[0, i].numpy() > 0, SPACING[::-1]) if t[0, i].any() else 0.0
        assert float(rows[region]["hd95_mm"]) == pytest.approx(brats, abs=1e-3)
    # The public BraTS 2023 code (43c9052) on this case (ET as 3): Legacy_HD95 WT 16.7332 mm, TC and
    # ET 0. MONAI's HD95 counts surface voxels, not their area, and says 7.0 mm: the missed small
    # lesion's surface falls under its 95th percentile.
    assert float(rows["WT"]["hd95_mm"]) == pytest.approx(16.7332, abs=0.01)
    assert float(hd95[1]) == pytest.approx(7.0084, abs=0.01)
    # by hand: WT overlap 10*10*8 of 1000 + (1000 + 27) voxels
    assert float(rows["WT"]["dice"]) == pytest.approx(2 * 800 / (1000 + 1027), abs=1e-4)
    assert float(rows["ET"]["dice"]) == 1.0
    assert float(rows["ET"]["hd95_mm"]) == 0.0
    # volumes: 2 mm^3 voxels
    assert float(rows["WT"]["volume_error_ml"]) == pytest.approx((1000 - 1027) * 2 / 1000, abs=1e-4)
    # panoptica: the big lesion matched, the small one missed -> recognition quality (F1) = 2*1/(2*1+0+1)
    assert float(rows["WT"]["recognition_quality"]) == pytest.approx(2 / 3, abs=1e-4)
    # BraTS lesion-wise: the small lesion is 27 voxels of 2 mm^3 = 54 mm^3 > 50, so it counts,
    # missed (Dice 0, HD95 374); the big one has Dice 0.8 and HD95 2 mm (shifted 2 x 1 mm)
    assert float(rows["WT"]["brats_lesion_dice"]) == pytest.approx((0.8 + 0) / 2, abs=1e-4)
    assert float(rows["WT"]["brats_lesion_hd95_mm"]) == pytest.approx((2 + 374) / 2, abs=1e-3)
    assert float(rows["ET"]["brats_lesion_dice"]) == 1.0
    assert int(float(rows["WT"]["lesions_true"])) == 2
    assert int(float(rows["WT"]["lesions_pred"])) == 1
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["regions"]["WT"]["dice"]["mean"] == pytest.approx(float(rows["WT"]["dice"]), abs=1e-4)
    assert (tmp_path / "out" / "boxplots.png").stat().st_size > 1000


def test_prediction_on_another_grid_is_refused(tmp_path):
    from brainsegfounder_training.finetuning.evaluate import evaluate

    _truth, pred = _known_case(tmp_path)
    _write(pred, tmp_path / "pred" / "BraTS2021_00001.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(UserError, match="not on the grid of its label"):
        evaluate(str(tmp_path / "data"), str(tmp_path / "out"), pred=str(tmp_path / "pred"))
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_evaluate_a_model_from_the_cli(tmp_path, brats_root, brats_model, capsys):
    """--model: segment every case into OUT/predictions, then score them; the numbers in the
    CSV are those of the written label maps."""
    from brainsegfounder.labels import schema
    from brainsegfounder_training.finetuning.metrics import region_dice

    code, out, err = run_cli(
        [
            "evaluate",
            "--data",
            brats_root,
            "--model",
            brats_model,
            "--out",
            tmp_path / "eval",
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    assert "2 cases" in out
    assert "WT" in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "metrics.csv").read_text())))
    assert len(rows) == 6
    case = rows[0]["case_id"]
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "eval" / "predictions" / f"{case}.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_root / case / f"{case}_seg.nii.gz")))
    s = schema("brats_regions")
    dice = region_dice(s.labels_to_regions(pred), s.labels_to_regions(truth))
    assert [float(r["dice"]) for r in rows[:3]] == pytest.approx(list(dice), abs=1e-4)
