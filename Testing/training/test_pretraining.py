"""Pretraining runs: the three pretext losses go down, stage 1 -> stage 2 -> fine-tune from the CLI,
a killed run resumes where it stopped, and 2 DDP processes skip unreadable subjects and finish."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import PRETRAIN_QUICK, run_cli
from quick import CPU, QUICK, cli, kill_after_first_state, torchrun_cpu

pytestmark = pytest.mark.slow  # every test here is a pretraining run

PT_QUICK = PRETRAIN_QUICK  # at 3 mm a 64^3 crop is the whole brain


def _records(run, kind):
    return [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == kind
    ]


def _learn(subjects, weights, steps, seed=0):
    """Train the tiny SSL head on 4 subjects (one 64^3 crop each, the whole brain at 3 mm, fresh
    rotations and corruptions every step) through the real stream and pretext code; returns the
    three losses on a fixed evaluation batch (fixed views) before and after. The tiny network
    here has 4^3 attention windows instead of 7^3: six times cheaper on a CPU (7^3 windows pad
    the 32^3 first stage to 35^3), and nothing under test depends on the window size."""
    from brainsegfounder.networks import SIZES, NetworkConfig
    from brainsegfounder_training.pretraining.data import CropStream
    from brainsegfounder_training.pretraining.head import SSLHead
    from brainsegfounder_training.pretraining.pretext import PretextSettings, make_views, pretext_losses

    stream = CropStream(subjects, "LPS", (64, 64, 64), crops=1)
    settings = PretextSettings(*weights, gather_negatives=False)
    torch.manual_seed(seed)
    head = SSLHead(NetworkConfig(2, 0, **SIZES["tiny"], window_size=4), use_flash_attention=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=0.1)

    def batch(step):
        return torch.cat([stream[(i, 1000 * step + i)]["image"] for i in range(len(subjects))])

    def evaluate():
        inputs, targets, rotations = make_views(
            batch(997), np.random.default_rng(999), torch.Generator().manual_seed(999), settings
        )
        with torch.no_grad():
            losses = pretext_losses(head(inputs), targets, rotations, settings)
        return {k: float(getattr(losses, k)) for k in ("rotation", "contrastive", "reconstruction")}

    before = evaluate()
    for step in range(steps):
        inputs, targets, rotations = make_views(
            batch(step), np.random.default_rng(step), torch.Generator().manual_seed(step), settings
        )
        losses = pretext_losses(head(inputs), targets, rotations, settings)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    return before, evaluate()


def test_rotation_and_inpainting_losses_go_down(healthy_root):
    """Trained together (1:0:1) for 16 steps: rotation is predicted better than chance (ln 4)
    and the reconstruction error falls."""
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    subjects, _ = discover_subjects(healthy_root, ["t1", "flair"])
    before, after = _learn(subjects[:4], (1.0, 0.0, 1.0), steps=16)
    assert after["rotation"] < min(before["rotation"], np.log(4)) - 0.1, (before, after)
    assert after["reconstruction"] < before["reconstruction"] - 0.05, (before, after)


def test_contrastive_loss_goes_down(healthy_root):
    """Trained alone for 20 steps, NT-Xent over 8 views falls below ln 7, its value when all
    embeddings are alike (so the views are told apart, not collapsed). With 1:1:1 weights on this
    near-identical synthetic cohort it stays at ln 7 for the first few dozen steps."""
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    subjects, _ = discover_subjects(healthy_root, ["t1", "flair"])
    before, after = _learn(subjects[:4], (0.0, 1.0, 0.0), steps=20)
    assert after["contrastive"] < min(before["contrastive"], np.log(7)) - 0.05, (before, after)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, healthy_root):
    from brainsegfounder_training.harness.run_folder import RunFolder
    from brainsegfounder_training.pretraining.loop import Pretrainer
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    out = tmp_path_factory.mktemp("stage1") / "run"
    recipe = load_pretrain_recipe(
        "stage1-ukb",
        [f"data.path={healthy_root}", *PT_QUICK, "train.steps=4", "train.val_every=2", "train.save_every=2"],
    )
    return out, Pretrainer(recipe, RunFolder(out), False, "cpu").fit()


def test_stage1_run_logs_and_keeps_the_best_by_reconstruction(stage1_run):
    run, summary = stage1_run
    steps = _records(run, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(r[k]) for r in steps for k in ("loss", "rotation", "contrastive", "reconstruction"))
    val = _records(run, "validation")
    assert [r["step"] for r in val] == [0, 2, 4]  # the untrained model first
    assert summary["best"]["val_reconstruction"] == min(r["val_reconstruction"] for r in val[1:])
    assert summary["best"]["step"] in (2, 4)
    assert (run / "pretraining_curves.png").is_file()


def test_stage1_model_describes_itself(stage1_run):
    from brainsegfounder.checkpoints import load_checkpoint

    run, summary = stage1_run
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.kind == "ssl"
    assert ckpt.meta.task == "ssl"
    assert ckpt.meta.modalities == ("t1", "flair")
    assert ckpt.meta.normalization == "zscore_nonzero"
    assert ckpt.meta.roi_size == (64, 64, 64)
    assert ckpt.network.in_channels == 2
    assert ckpt.meta.provenance["stage"] == 1
    assert ckpt.meta.provenance["step"] == summary["best"]["step"]
    subjects = json.loads((run / "subjects.json").read_text())
    assert len(subjects["train"]) == 5
    assert len(subjects["validation"]) == 1


def test_stage1_to_stage2_to_finetune_from_the_cli(stage1_run, train_root, tmp_path, capsys):
    from brainsegfounder.checkpoints import load_checkpoint

    stage1, _ = stage1_run
    code, out, err = run_cli(
        [
            "pretrain",
            "--config",
            "stage2-brats",
            "--init",
            stage1 / "best.pt",
            "--data",
            train_root,
            "--out",
            tmp_path / "stage2",
            *PT_QUICK,
            "train.steps=2",
            "train.val_every=2",
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    assert "stage 2: best validation reconstruction" in out
    init = json.loads((tmp_path / "stage2" / "init.json").read_text())
    assert init["kind"] == "ssl"
    assert init["inflated"]["swinViT.patch_embed.proj.weight"] == "flair<-flair, t1ce<-mean, t1<-t1, t2<-mean"
    assert not init["reinitialised"]
    stage2 = load_checkpoint(tmp_path / "stage2" / "best.pt")
    assert stage2.meta.modalities == ("flair", "t1ce", "t1", "t2")
    assert stage2.meta.provenance["stage"] == 2
    assert stage2.meta.provenance["base"].startswith("run ")  # stage 1's name and version

    code, out, err = run_cli(
        [
            "finetune",
            "--config",
            "brats",
            "--base",
            tmp_path / "stage2" / "best.pt",
            "--data",
            train_root,
            "--out",
            tmp_path / "ft",
            *QUICK,
            "model.size=auto",
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    init = json.loads((tmp_path / "ft" / "init.json").read_text())
    encoder = [k for k in stage2.state_dict if k.startswith("swinViT.")]
    assert init["kind"] == "ssl"
    assert init["loaded_count"] == len(encoder)
    assert not init["inflated"]
    assert (tmp_path / "ft" / "best.pt").is_file()


def test_killed_pretraining_resumes_where_it_stopped(tmp_path, healthy_root):
    """SIGKILL after a saved step, resume, and match a run never interrupted: the same steps with the
    same learning rates and the same losses (the data, crops and corruptions are functions of seed
    and step), and the same weights up to floating-point rounding: a fresh process's first kernels
    may round differently, which AdamW's normalised steps carry to ~1e-4 after a few steps."""
    args = [
        "pretrain",
        "--config",
        "stage1-ukb",
        "--data",
        healthy_root,
        *PT_QUICK,
        "train.steps=3",
        "train.save_every=1",
        "train.val_every=3",
        *CPU,
    ]
    whole = cli([*args, "--out", tmp_path / "whole"])
    state = kill_after_first_state(args, tmp_path / "killed")
    assert torch.load(state, weights_only=True)["step"] < 3
    resumed = cli(["pretrain", "--resume", tmp_path / "killed", *CPU])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    a = torch.load(tmp_path / "whole" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    steps_a, steps_b = _records(tmp_path / "whole", "step"), _records(tmp_path / "killed", "step")
    assert [r["step"] for r in steps_b] == [1, 2, 3]  # none logged twice
    for ra, rb in zip(steps_a, steps_b, strict=True):
        assert ra["lr"] == rb["lr"]
        for key in ("rotation", "contrastive", "reconstruction"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
    assert b["best"]["val_reconstruction"] == pytest.approx(a["best"]["val_reconstruction"], rel=1e-5)
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=5e-4), key


def test_two_process_torchrun_skips_unreadable_subjects(tmp_path, healthy_root):
    """3 of the 5 training subjects are truncated: 2 processes x 2 steps draw 4 different subjects
    of the first pass, so at least 2 are skipped, listed, and the run still finishes."""
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe
    from brainsegfounder_training.pretraining.subjects import discover_subjects, split_subjects

    root = tmp_path / "cohort"
    shutil.copytree(healthy_root, root)
    overrides = [
        f"data.path={root}",
        *PT_QUICK,
        "train.batch_size=1",
        "train.crops_per_volume=2",
        "train.steps=2",
        "train.val_every=2",
    ]
    recipe = load_pretrain_recipe("stage1-ukb", overrides)
    train, _ = split_subjects(discover_subjects(root, ["t1", "flair"])[0], recipe["data"], 0)
    broken = {s.subject_id for s in train[:3]}
    for subject in train[:3]:
        t1 = subject.images["t1"]
        data = gzip.decompress(Path(t1).read_bytes())
        Path(t1).write_bytes(gzip.compress(data[: len(data) // 3]))
    result = torchrun_cpu(
        [
            "pretrain",
            "--config",
            "stage1-ukb",
            *overrides[1:],
            f"--data={root}",
            "--out",
            str(tmp_path / "ddp"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["steps"] == 2
    skipped = [json.loads(line) for line in (tmp_path / "ddp" / "skipped.jsonl").read_text().splitlines()]
    assert 2 <= len(skipped) == summary["skipped"]
    assert {s["id"] for s in skipped} <= broken
    assert all("truncated" in s["reason"] for s in skipped), skipped
