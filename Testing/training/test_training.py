"""Training: it learns, it resumes after a kill, it runs as 2 DDP processes, and a full disk
never costs the last good checkpoint."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainsegfounder.errors import UserError

from quick import CPU, QUICK, cli, kill_after_first_state, quick_recipe, run_trainer, torchrun_cpu

pytestmark = pytest.mark.slow  # every test here is a training run


def test_a_few_steps_lower_the_loss_and_raise_the_dice(tmp_path, train_root):
    """Twelve steps from scratch: at 3 mm one 64^3 crop holds the whole brain. The Dice is measured
    with the run's validator on one of the cases before and after."""
    from brainsegfounder.labels import schema
    from brainsegfounder_training.finetuning.datasets import check_cases, discover
    from brainsegfounder_training.finetuning.initialise import build_model, resolve_task
    from brainsegfounder_training.finetuning.trainer import STATE_FORMAT, Validator
    from brainsegfounder_training.harness import distributed
    from brainsegfounder_training.harness.state import load_state

    recipe = quick_recipe(
        train_root,
        "train.steps_per_epoch=12",
        "train.lr=2e-3",
        "train.loss=dice_ce",
        "train.crop=posneg",
        "augment.flip=0",
        "data.cache=memory",
    )
    spec = resolve_task(recipe)
    cases = check_cases(discover(train_root, spec.modalities), schema(spec.label_schema))
    torch.manual_seed(0)
    model, _ = build_model(spec, recipe)
    validator = Validator(cases[1:2], spec, recipe, distributed.Dist(device=torch.device("cpu")))
    before = validator(model)["dice"]

    run_trainer(recipe, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "step"]
    assert len(losses) == 12
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.03, losses
    model.load_state_dict(load_state(tmp_path / "run" / "state.pt", STATE_FORMAT, "finetune")["model"])
    after = validator(model)["dice"]
    assert after["WT"] > before["WT"] + 0.3, (before, after)
    assert (tmp_path / "run" / "learning_curves.png").is_file()


def test_killed_run_resumes_where_it_stopped(tmp_path, train_root):
    """SIGKILL right after epoch 1 is saved, resume, and end with the same weights as a run that
    was never interrupted (the random state is derived from seed and epoch)."""
    args = [
        "finetune",
        "--config",
        "brats",
        "--data",
        train_root,
        *QUICK,
        "train.epochs=3",
        "train.val_every=10",
        *CPU,
    ]
    whole = cli([*args, "--out", tmp_path / "whole"])
    state = kill_after_first_state(args, tmp_path / "killed")
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] < 3
    resumed = cli(["finetune", "--resume", tmp_path / "killed", *CPU])
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    whole.communicate(timeout=600)
    assert whole.returncode == 0
    a = torch.load(tmp_path / "whole" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "state.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-5), key
    epochs = [
        json.loads(line)["epoch"]
        for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "epoch"
    ]
    assert epochs == [1, 2, 3]  # no epoch logged twice


def test_two_process_torchrun_on_cpu(tmp_path, train_root):
    out = tmp_path / "ddp"
    result = torchrun_cpu(
        [
            "finetune",
            "--config",
            "brats",
            "--data",
            str(train_root),
            *QUICK,
            "--out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["steps"] == 1
    assert set(summary["best"]["dice"]) == {"TC", "WT", "ET"}
    from brainsegfounder.checkpoints import load_checkpoint

    meta = load_checkpoint(out / "best.pt").meta  # trained on a synthetic cohort only: says so on every run
    assert meta.trained_on == "synthetic"
    assert meta.caution().startswith("model ddp was trained on synthetic data only")


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, train_root, monkeypatch):
    recipe = quick_recipe(train_root, "train.epochs=2", "train.val_every=10")
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "brainsegfounder-train-state":
            calls.append(obj["epoch"])
            if obj["epoch"] == 2:
                Path(f).write_bytes(b"x" * 1000)  # half a file, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError, match=r"the disk is full\); the last finished epoch is kept"):
        run_trainer(recipe, tmp_path / "run")
    monkeypatch.setattr(torch, "save", real_save)
    assert calls == [1, 2]
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temp file left
