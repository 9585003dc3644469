"""Saved corrections -> fine-tune with replay -> a registered, self-describing model version."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli, save_cases
from quick import CPU, QUICK


@pytest.mark.slow
def test_corrections_make_a_registered_model(tmp_path, home, train_root, brats_root, brats_model, capsys):
    cases = save_cases(tmp_path / "cases", train_root, range(4))
    code, out, err = run_cli(
        [
            "finetune",
            "--base",
            brats_model,
            "--data",
            cases,
            "--replay",
            brats_root,
            "--register",
            "tiny-brats-ft",
            "--out",
            tmp_path / "run",
            *CPU,
            *[q for q in QUICK if not q.startswith(("model.size", "model.roi", "data.folds"))],
            "data.cache=memory",
        ],
        capsys,
    )
    assert code == 0, err
    registered = home / "models" / "tiny-brats-ft.pt"
    assert registered.is_file()
    assert "registered as tiny-brats-ft" in out

    from brainsegfounder.checkpoints import load_checkpoint

    meta = load_checkpoint(registered).meta
    assert meta.name == "tiny-brats-ft"
    assert meta.task == "brats"
    assert meta.modalities == ("flair", "t1ce", "t1", "t2")
    assert meta.roi_size == (64, 64, 64)
    assert meta.trained_on == "real"  # corrections of real patients' scans, whatever the replay data
    assert meta.caution() is None
    prov = meta.provenance
    assert prov["base"].startswith("tiny-brats")
    assert len(prov["val_cases"]) == 1
    assert len(prov["train_cases"]) == 3
    assert all(c["content_sha256"] and c["revision"] == 1 for c in prov["train_cases"])
    assert prov["replay_cases"] == 2  # replay: the base data's 2 cases, for 3 corrected training cases
    assert set(prov["val_dice_before"]) == set(prov["val_dice"]) == {"TC", "WT", "ET"}
    # never worse than the base on the held-out corrections: the base's own score is the first best
    assert sum(prov["val_dice"].values()) >= sum(prov["val_dice_before"].values()) - 1e-6
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert not set(splits["val"]) & {c.removeprefix("replay:") for c in splits["replay"]}

    # the new version is a local model: listed, and usable by name
    code, out, _ = run_cli(["models", "list"], capsys)
    assert "tiny-brats-ft" in out
    # a second registration under the same name never replaces the first
    from brainsegfounder.registry import register_model

    assert register_model(registered, "tiny-brats-ft").name == "tiny-brats-ft-2.pt"
