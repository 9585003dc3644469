"""The README's main job: ``brainsegfounder demo``."""

from __future__ import annotations

import json

import SimpleITK as sitk

from conftest import run_cli


def test_demo_runs_end_to_end_and_says_it_is_untrained(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo", "--spacing", "3", "--progress", "none"], capsys)
    assert code == 0, err
    assert "UNTRAINED" in out and "Dice against the synthetic ground truth" in out
    demo = tmp_path / "demo"
    for name in ("labels.nii.gz", "labels.seg.nrrd", "summary.json", "preview.png"):
        assert (demo / name).stat().st_size > 0
    summary = json.loads((demo / "summary.json").read_text())
    reference = sitk.ReadImage(summary["inputs"]["flair"]["path"])
    assert sitk.ReadImage(str(demo / "labels.nii.gz")).GetSize() == reference.GetSize()
