"""The README's main job: ``brainsegfounder demo``."""

from __future__ import annotations

import json
import re

import pytest
import SimpleITK as sitk

from helpers import run_cli


@pytest.mark.slow
def test_demo_segments_a_fresh_case_well(tmp_path, capsys):
    """The shipped demo model on a synthetic case from a seed it was not trained on, at the
    README's default settings."""
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo", "--progress", "none"], capsys)
    assert code == 0, err
    assert "note: model brats-synthetic-demo was trained on synthetic data only" in out
    assert "Dice against the synthetic ground truth" in out
    demo = tmp_path / "demo"
    assert f"synthetic input case (four contrasts and its ground truth): {demo / 'synthetic_brats_seed2026'}" in out
    for name in ("labels.nii.gz", "labels.seg.nrrd", "summary.json", "preview.png"):
        assert (demo / name).stat().st_size > 0
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["notes"][0].startswith("model brats-synthetic-demo was trained on synthetic data only")
    reference = sitk.ReadImage(summary["inputs"]["flair"]["path"])
    assert sitk.ReadImage(str(demo / "labels.nii.gz")).GetSize() == reference.GetSize()
    assert summary["model"]["name"] == "brats-synthetic-demo"
    dice_part = out.split("Dice against the synthetic ground truth:")[1]
    dice = {k: float(v) for k, v in re.findall(r"\((\w+)\)\s+([0-9.]+)\n", dice_part)}
    assert set(dice) == {"TC", "WT", "ET"}, out
    assert dice["WT"] > 0.7, out
    assert dice["TC"] > 0.5, out


@pytest.mark.slow
def test_demo_in_the_realistic_world_uses_the_model_trained_on_it(tmp_path, capsys):
    """``demo --world realistic``: a case of the realistic synthetic world, segmented by the demo
    model trained on that world (measured: Dice TC 0.76 / WT 0.85 / ET 0.78 on seed 2026; the
    classic demo model scored 0.31 / 0.58 / 0.29 on the same case)."""
    code, out, err = run_cli(["demo", "--world", "realistic", "--out", tmp_path / "demo", "--progress", "none"], capsys)
    assert code == 0, err
    demo = tmp_path / "demo"
    assert f"{demo / 'synthetic_brats_realistic_seed2026'}" in out
    datalist = json.loads((demo / "synthetic_brats_realistic_seed2026" / "datalist.json").read_text())
    assert "texture" in datalist["description"]["world"], datalist["description"]
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["model"]["name"] == "brats-synthetic-realistic"
    dice_part = out.split("Dice against the synthetic ground truth:")[1]
    dice = {k: float(v) for k, v in re.findall(r"\((\w+)\)\s+([0-9.]+)\n", dice_part)}
    assert dice["WT"] > 0.75, out
    assert dice["TC"] > 0.6, out
    assert dice["ET"] > 0.6, out


def test_demo_refuses_an_unknown_world(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        run_cli(["demo", "--world", "dreamy", "--out", tmp_path / "demo"], capsys)
    assert exit.value.code == 2
    assert "invalid choice: 'dreamy' (choose from 'classic', 'realistic')" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
