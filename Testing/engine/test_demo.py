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
