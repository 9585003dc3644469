"""The pretext tasks beside BrainSegFounder's: Volume Fusion, the 3D MAE (input masking, any
backbone), the Swin MAE (mask token) and their combinations.

Known by construction: a fusion of a crop of ones over a crop of zeros is its class map / K; a
masked loss does not move when a visible voxel of the prediction does; a Swin MAE's output does
not move when a hidden voxel of its input does. Slow: each task's loss falls on synthetic
healthy subjects, each task's model is fine-tuned and segments, stage 1 -> stage 2 with new
inputs, and a killed run of a new task resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import FINETUNE_QUICK, PRETRAIN_QUICK, refused_pretrain, segment_args
from quick import CPU, cli, kill_after_first_state

ROI = (64, 64, 64)


def _recipe(*overrides, root="unused"):
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    return load_pretrain_recipe("stage1-ukb", [f"data.path={root}", *PRETRAIN_QUICK, *overrides])


# -- Volume Fusion ------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [4, 2])
def test_a_fusion_of_ones_over_zeros_is_its_class_map_over_k(classes):
    """fg = 1, bg = 0: X = alpha = c / K at every voxel, so X * K is the label map exactly."""
    from brainsegfounder_training.pretraining.volume_fusion import fuse

    ones, zeros = torch.ones(3, 2, *ROI), torch.zeros(3, 2, *ROI)
    fused, labels = fuse(ones, zeros, np.random.default_rng(0), classes=classes)
    assert labels.shape == (3, 1, *ROI)
    assert labels.dtype == torch.int64
    assert torch.equal(fused * classes, labels.expand_as(fused).float())
    assert set(labels.unique().tolist()) <= set(range(classes + 1))
    assert labels.unique().numel() > 2  # boxes of several classes, and background


def test_fusion_blends_each_voxel_by_its_coefficient():
    from brainsegfounder_training.pretraining.volume_fusion import fuse

    g = torch.Generator().manual_seed(1)
    fg, bg = torch.randn(2, 2, *ROI, generator=g), torch.randn(2, 2, *ROI, generator=g)
    fused, labels = fuse(fg, bg, np.random.default_rng(3))
    alpha = labels.float() / 4
    assert torch.allclose(fused, alpha * fg + (1 - alpha) * bg)
    assert torch.equal(fused[labels.expand_as(fused) == 0], bg[labels.expand_as(fused) == 0])
    assert torch.equal(fused[labels.expand_as(fused) == 4], fg[labels.expand_as(fused) == 4])


def test_boxes_are_drawn_in_the_recipe_range():
    """One box of the largest size at most covers (5/8)^3 of the crop; 40 of them cover more than one."""
    from brainsegfounder_training.pretraining.volume_fusion import class_map

    rng = np.random.default_rng(0)
    one = class_map(ROI, rng, 4, (1, 1), (0.625, 0.625))
    assert (one > 0).sum() == 40**3  # round(0.625 * 64) = 40 voxels a side
    many = [class_map(ROI, rng, 4, (10, 40), (0.0625, 0.625)) for _ in range(5)]
    assert all(0.05 < (m > 0).mean() < 1 for m in many)


@pytest.mark.parametrize(
    ("ids", "crops", "expected"),
    [
        (["a", "b", "c"], 1, [1, 2, 0]),
        (["a", "b"], 2, [2, 3, 0, 1]),  # each crop with the same-numbered crop of the other subject
        (["a", "a", "b"], 1, [2, 2, 0]),  # the same subject twice in a batch: the other one
    ],
)
def test_background_crops_come_from_another_subject(ids, crops, expected):
    from brainsegfounder_training.pretraining.volume_fusion import partners

    assert partners(ids, crops) == expected


# -- masking --------------------------------------------------------------------------------------


def test_every_crop_hides_the_same_number_of_blocks():
    from brainsegfounder_training.pretraining.masking import block_mask, upsample

    hidden = block_mask(3, ROI, 16, 0.75, torch.Generator().manual_seed(0))
    assert hidden.shape == (3, 4, 4, 4)
    assert hidden.flatten(1).sum(1).tolist() == [48, 48, 48]
    assert not torch.equal(hidden[0], hidden[1])
    voxels = upsample(hidden, 16)
    assert voxels.shape == (3, *ROI)
    assert torch.equal(voxels[:, ::16, ::16, ::16], hidden)
    assert voxels.float().mean() == pytest.approx(0.75)


def test_the_masked_loss_ignores_visible_voxels():
    from brainsegfounder_training.pretraining.masking import block_mask, masked_mse, upsample

    voxels = upsample(block_mask(2, ROI, 16, 0.75, torch.Generator().manual_seed(0)), 16)
    prediction, target = torch.randn(2, 2, *ROI), torch.randn(2, 2, *ROI)
    loss = masked_mse(prediction, target, voxels)
    visible = (~voxels).nonzero()[0].tolist()
    hidden = voxels.nonzero()[0].tolist()
    changed = prediction.clone()
    changed[visible[0], 1, visible[1], visible[2], visible[3]] = float("nan")
    assert masked_mse(changed, target, voxels) == loss
    changed[hidden[0], 1, hidden[1], hidden[2], hidden[3]] += 5.0
    assert masked_mse(changed, target, voxels) != loss
    expected = ((prediction - target) ** 2).permute(1, 0, 2, 3, 4)[:, voxels].mean()
    assert loss == pytest.approx(float(expected), rel=1e-5)


class _Fixed(torch.nn.Module):
    """A "network" whose prediction is given: the loss alone is under test."""

    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, *mask):
        return self.prediction[: x.shape[0]]


@pytest.mark.parametrize(
    ("task", "first_row", "channel"), [("mae", 0, 0), ("swin-mae", 0, 0), ("volume-fusion+mae", 2, 5)]
)
def test_mae_task_losses_ignore_visible_voxels(task, first_row, channel):
    """The MAE part of each task's loss: a visible voxel of the prediction changed (in the rows that
    reconstruct the inputs: volume-fusion+mae's batch is [fused; masked], its channels [5 classes;
    2 inputs]), the loss stays; a hidden one changed, it moves."""
    from brainsegfounder_training.pretraining.masking import block_mask, upsample
    from brainsegfounder_training.pretraining.tasks import pretext_task

    pretext = pretext_task(_recipe(f"task={task}"))
    crops = torch.randn(2, 2, *ROI)
    prediction = torch.randn(4, pretext.out_channels() or 2, *ROI)

    def mae_loss(prediction):
        rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(7)
        return pretext.losses(_Fixed(prediction), crops, ["a", "b"], rng, generator, contextlib.nullcontext).values[
            "mae"
        ]

    voxels = upsample(block_mask(2, ROI, 16, 0.75, torch.Generator().manual_seed(7)), 16)  # the masks drawn
    loss = mae_loss(prediction)
    v, h = (~voxels).nonzero()[0].tolist(), voxels.nonzero()[0].tolist()
    changed = prediction.clone()
    changed[first_row + v[0], channel, v[1], v[2], v[3]] += 100.0
    assert mae_loss(changed) == loss
    changed[first_row + h[0], channel, h[1], h[2], h[3]] += 100.0
    assert mae_loss(changed) > loss


def test_the_swin_mae_sees_nothing_of_a_hidden_block():
    """The mask token replaces the patch embedding of hidden blocks, so their voxels do not reach
    the network: changing them leaves the output as it is; a visible voxel changes it."""
    from brainsegfounder.networks import sized_config
    from brainsegfounder_training.pretraining.masking import block_mask, upsample
    from brainsegfounder_training.pretraining.swin_mae import SwinMAE

    torch.manual_seed(0)
    net = SwinMAE(replace(sized_config("SwinUNETR", "tiny", 2, 0), window_size=4)).eval()
    hidden = block_mask(1, ROI, 16, 0.75, torch.Generator().manual_seed(2))
    voxels = upsample(hidden, 16)
    x = torch.randn(1, 2, *ROI)
    with torch.no_grad():
        before = net(x, hidden)
        y = x.clone()
        y[:, :, voxels[0]] = torch.randn(2, int(voxels.sum()))
        assert torch.equal(net(y, hidden), before)
        y[:, :, ~voxels[0]] += 1.0
        assert not torch.allclose(net(y, hidden), before)
    assert before.shape == x.shape


# -- bad settings -------------------------------------------------------------------------------


def _resenc_ssl_checkpoint(path):
    from brainsegfounder.checkpoints import ModelMeta, save_checkpoint
    from brainsegfounder.networks import build_network, sized_config

    config = sized_config("ResEncUNet", "tiny", 2, 2)
    meta = ModelMeta(network=config, modalities=("t1", "flair"), label_schema="", task="ssl")
    return save_checkpoint(path, build_network(config), meta)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task=swin-mae", "model.architecture=resenc"],
            r"task swin-mae works on SwinUNETR's Swin encoder, not a ResEncUNet; .* or task mae for a ResEncUNet",
        ),
        (
            ["task=brainsegfounder", "model.architecture=pctnet"],
            r"task brainsegfounder works on SwinUNETR's Swin encoder, not a PCTNet",
        ),
        (
            ["task=volume-fusion", "model.architecture=pctnet", "model.roi=[40,48,48]"],
            r"model.roi 40x48x48 does not fit PCTNet: each side must be a multiple of its total stride 16, at least 32",
        ),
        (["task=mae", "model.roi=[96,96,80]"], r"model.roi \[96, 96, 80\] must be three multiples of 32"),
        (
            ["task=mae", "model.architecture=pctnet", "model.roi=[48,48,48]", "mae.block=32"],
            r"model.roi 48x48x48 is not divisible by mae.block 32",
        ),
        (["task=mae", "mae.mask_ratio=0"], r"mae.mask_ratio must be a number in \(0, 1\)"),
        (["task=mae", "mae.mask_ratio=1.0"], r"mae.mask_ratio must be a number in \(0, 1\)"),
        (["task=mae", "mae.mask_ratio=0.001"], r"mae.mask_ratio 0.001 hides 0 of the 64 blocks"),
        (["task=swin-mae", "mae.block=8"], r"mae.block 8 must be a multiple of 16 for swin-mae"),
        (["task=volume-fusion", "train.batch_size=1"], r"fuses crops of two subjects: set train.batch_size"),
        (["task=volume-fusion", "volume_fusion.boxes=[5,2]"], r"volume_fusion.boxes \[5, 2\] must be"),
        (["task=rotation"], r"recipe task is 'rotation'; choose one of brainsegfounder, swin-mae"),
        (["task=volume-fusion", "model.architecture=resenc", "model.size=L"], None),  # see below: valid
    ],
)
def test_bad_task_settings_fail_cleanly_and_write_nothing(tmp_path, healthy_root, capsys, overrides, message):
    if message is None:  # a valid recipe is accepted (the check is not too strict)
        _recipe(*overrides, root=healthy_root)
        return
    refused_pretrain(
        capsys, tmp_path / "run", message, "--config", "stage1-ukb", "--data", healthy_root, *PRETRAIN_QUICK, *overrides
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=mae", "model.architecture=swinunetr"], r"is a ResEncUNet but model.architecture is SwinUNETR"),
        (["task=swin-mae"], r"task swin-mae works on SwinUNETR's Swin encoder, not a ResEncUNet"),
        (["task=mae", "model.architecture=resenc", "model.size=L"], r"init checkpoint is ResEncUNet .* model.size L"),
    ],
)
def test_an_init_checkpoint_of_another_backbone_is_refused_by_name(tmp_path, healthy_root, capsys, overrides, message):
    init = _resenc_ssl_checkpoint(tmp_path / "resenc.pt")
    args = ["--config", "stage2-atlas", "--init", init, "--data", healthy_root, *PRETRAIN_QUICK, *overrides]
    refused_pretrain(capsys, tmp_path / "run", message, *args)


def test_published_recipes_of_the_new_tasks():
    """The seeds' optimisers and sizes as the bundled GPU recipes' defaults."""
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    vf = load_pretrain_recipe("volume-fusion-pctnet")
    assert (vf["task"], vf["model"]["architecture"], vf["model"]["size"]) == ("volume-fusion", "pctnet", "45M")
    assert (vf["train"]["optimizer"], vf["train"]["lr"], vf["train"]["weight_decay"]) == ("adam", 1e-3, 1e-5)
    assert vf["train"]["batch_size"] * vf["train"]["crops_per_volume"] == 4
    mae = load_pretrain_recipe("mae-resenc-l")
    assert (mae["task"], mae["model"]["architecture"], mae["model"]["size"], mae["model"]["roi"]) == (
        "mae",
        "resenc",
        "L",
        [160, 160, 160],
    )
    assert (mae["train"]["optimizer"], mae["train"]["momentum"], mae["train"]["schedule"]) == ("sgd", 0.99, "poly")
    assert (mae["train"]["lr"], mae["train"]["weight_decay"], mae["train"]["grad_clip"]) == (1e-2, 3e-5, 12)
    assert mae["train"]["steps"] == 250_000
    assert mae["mae"]["mask_ratio"] == 0.75
    swin = load_pretrain_recipe("swin-mae")
    assert (swin["task"], swin["train"]["optimizer"], swin["train"]["betas"]) == ("swin-mae", "adamw", [0.9, 0.95])
    assert (swin["train"]["lr"], swin["train"]["weight_decay"], swin["train"]["schedule"]) == (1e-3, 0.05, "cosine")


@pytest.mark.parametrize(("step", "factor"), [(0, 0.5), (1, 1.0), (2, 1.0), (6, 0.5**0.9), (10, 0.0), (12, 0.0)])
def test_poly_decay_after_a_linear_warm_up(step, factor):
    """nnU-Net's (1 - t)^0.9 after 2 warm-up steps of a 10-step run (t: the share of the decay done)."""
    from brainsegfounder_training.harness.optimisation import warmup_poly

    assert warmup_poly(step, 2, 10) == pytest.approx(factor)


def test_the_3d_mae_optimiser_is_sgd_with_nesterov_momentum():
    from brainsegfounder_training.harness.optimisation import Optimisation

    net = torch.nn.Linear(2, 2)
    train = {"lr": 1e-2, "weight_decay": 3e-5, "amp": True, "optimizer": "sgd", "momentum": 0.99, "schedule": "poly"}
    opt = Optimisation(net, train, torch.device("cpu"), warmup=0, total=4)
    group = opt.optimizer.param_groups[0]
    assert isinstance(opt.optimizer, torch.optim.SGD)
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.99, True, 3e-5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.lr)
        opt.step(net(torch.ones(1, 2)).sum(), net.parameters(), 12)
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs == sorted(lrs, reverse=True)


# -- slow: learning, fine-tuning, two stages, resume ----------------------------------------------

TASK_BACKBONES = [
    ("volume-fusion", "resenc"),
    ("volume-fusion+mae", "pctnet"),
    ("mae", "resenc"),
    ("mae", "swinunetr"),
    ("swin-mae", "swinunetr"),
    ("brainsegfounder+swin-mae", "swinunetr"),
]


def _learn(root, task, architecture, steps, lr=1e-3, seed=0, roi=ROI, subjects=2):
    """Train the task's tiny network on 4 subjects (one 64^3 crop each: the whole brain at 3 mm)
    through the real stream and task code; the task's losses on a fixed batch before and after.
    Swin windows of 4^3 instead of 7^3: six times cheaper on a CPU, nothing here depends on it."""
    from brainsegfounder.networks import SwinUNETRConfig
    from brainsegfounder_training.pretraining.data import CropStream
    from brainsegfounder_training.pretraining.start_weights import backbone_config
    from brainsegfounder_training.pretraining.subjects import discover_subjects
    from brainsegfounder_training.pretraining.tasks import pretext_task

    recipe = _recipe(f"task={task}", f"model.architecture={architecture}", f"model.roi={list(roi)}", root=root)
    pretext = pretext_task(recipe)
    config = backbone_config(recipe, pretext, None)
    if isinstance(config, SwinUNETRConfig):
        config = replace(config, window_size=4)
    torch.manual_seed(seed)
    net = pretext.build(config, False, True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    subjects = discover_subjects(root, ["t1", "flair"])[0][:subjects]
    stream = CropStream(subjects, "LPS", roi, crops=1)
    ids = [s.subject_id for s in subjects]

    def losses(step, **kw):
        crops = torch.cat([stream[(i, 1000 * step + i)]["image"] for i in range(len(subjects))])
        rng, generator = np.random.default_rng(step), torch.Generator().manual_seed(step)
        return pretext.losses(net, crops, ids, rng, generator, contextlib.nullcontext, gather=False, **kw)

    def evaluate():
        net.eval()
        with torch.no_grad():
            values = losses(997).values
        net.train()
        return values

    before = evaluate()
    for step in range(steps):
        optimizer.zero_grad()
        losses(step).total.backward()
        optimizer.step()
    return before, evaluate()


@pytest.mark.slow
@pytest.mark.parametrize(("task", "architecture"), TASK_BACKBONES)
def test_each_task_learns(healthy_root, task, architecture):
    """8 Adam steps (lr 1e-3) on 2 subjects, and on a fixed evaluation batch (fixed masks and
    fusions) the task's losses fall. Measured here (before -> after): volume-fusion / ResEnc
    1.213 -> 1.175 (voxels right 32% -> 51%); volume-fusion+mae / PCT-Net fusion 1.210 -> 1.193
    (10% -> 54%), MSE 0.338 -> 0.311; mae / ResEnc 0.307 -> 0.270; mae / SwinUNETR 0.410 -> 0.297;
    swin-mae 0.628 -> 0.280; brainsegfounder+swin-mae L1 0.509 -> 0.365, MSE 0.530 -> 0.353.
    The fusion loss falls slowly (Dice over 5 classes), its accuracy fast. The MAE on SwinUNETR
    (its full decoder at 64^3, the slowest pair) takes 4 steps: 0.410 -> 0.313."""
    before, after = _learn(
        healthy_root, task, architecture, steps=4 if (task, architecture) == ("mae", "swinunetr") else 8
    )
    if "fusion" in before:
        assert after["fusion"] < before["fusion"], (before, after)
        assert after["fusion_acc"] > before["fusion_acc"] + 0.15, (before, after)
    for key in ("mae", "reconstruction"):
        if key in before:
            assert after[key] < before[key] * 0.95, (key, before, after)
    assert after["loss"] < before["loss"], (before, after)


# What fine-tuning takes from a pretraining run depends on the backbone and on whether the run
# kept a decoder: one task per backbone, plus the MAE's full decoder on SwinUNETR. The Swin MAE alone
# and Volume Fusion on ResEnc reach fine-tuning through the same encoder loading as the pairs here
# (their own runs are tested below and in test_a_killed_volume_fusion_run_resumes_where_it_stopped).
FEED_BACKBONES = [
    ("volume-fusion+mae", "pctnet"),
    ("mae", "resenc"),
    ("mae", "swinunetr"),
    ("brainsegfounder+swin-mae", "swinunetr"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "architecture"), FEED_BACKBONES)
def test_each_task_feeds_finetune_and_segment(tmp_path, healthy_root, train_root, brats_inputs, task, architecture):
    """Pretrain 1 step, fine-tune on BraTS (encoder loaded, stem inflated from [t1, flair] to the four
    BraTS inputs, decoder re-initialised: init.json says which), then segment a case."""
    from brainsegfounder.checkpoints import load_checkpoint

    run = tmp_path / "pretrain"
    args = [*PRETRAIN_QUICK, "train.steps=1", "train.val_every=1", f"model.architecture={architecture}", *CPU]
    proc = cli(["pretrain", "--config", "stage1-ukb", "--task", task, "--data", healthy_root, "--out", run, *args])
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "stage 1: best validation" in out
    assert f"(task {task})" in out
    ckpt = load_checkpoint(run / "best.pt")
    assert (ckpt.meta.task, ckpt.meta.provenance["task"]) == ("ssl", task)

    ft = tmp_path / "finetune"
    proc = cli(
        [
            "finetune",
            "--config",
            "brats",
            "--base",
            run / "best.pt",
            "--data",
            train_root,
            "--out",
            ft,
            *FINETUNE_QUICK,
            "model.size=auto",
            *CPU,
        ]
    )
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    init = json.loads((ft / "init.json").read_text())
    encoder = ckpt.network.ENCODER_PREFIXES
    assert init["kind"] == "ssl"
    assert init["loaded"]
    assert all(k.startswith(encoder) for k in init["loaded"])
    kernel = ckpt.network.INPUT_KERNELS[0]
    assert init["inflated"][kernel] == "flair<-flair, t1ce<-mean, t1<-t1, t2<-mean"
    assert init["reinitialised"]
    assert not any(k.startswith(encoder) for k in init["reinitialised"])
    model = load_checkpoint(ft / "best.pt")
    assert model.network.NAME == ckpt.network.NAME
    assert model.network.out_channels == 3

    seg = tmp_path / "seg.nii.gz"
    proc = cli(segment_args(ft / "best.pt", brats_inputs[0], seg, "--device", "cpu"))
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert seg.is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("task", "architecture"), [("mae", "resenc"), ("swin-mae", "swinunetr")])
def test_stage_two_of_an_mae_inflates_its_inputs_and_maps_its_outputs(
    tmp_path, healthy_root, train_root, task, architecture
):
    """Stage 1 on [t1, flair], stage 2 on the four BraTS inputs: every tensor of stage 1 continues
    (same task), the input kernels inflated, the reconstruction rows mapped by modality."""
    from brainsegfounder.checkpoints import load_checkpoint

    quick = [*PRETRAIN_QUICK, "train.steps=1", "train.val_every=1", *CPU]
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    stage1 = ["pretrain", "--config", "stage1-ukb", "--task", task, "--data", healthy_root, "--out", s1]
    proc = cli([*stage1, f"model.architecture={architecture}", *quick])
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    proc = cli(
        [
            "pretrain",
            "--config",
            "stage2-brats",
            "--task",
            task,
            "--init",
            s1 / "best.pt",
            "--data",
            train_root,
            "--out",
            s2,
            *quick,
        ]
    )
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    init = json.loads((s2 / "init.json").read_text())
    first = load_checkpoint(s1 / "best.pt")
    assert not init["reinitialised"]
    assert set(init["loaded"]) == set(first.state_dict)
    how = "flair<-flair, t1ce<-mean, t1<-t1, t2<-mean"
    assert init["inflated"][first.network.INPUT_KERNELS[0]] == how
    out_rows = "decoder.project.weight" if task == "swin-mae" else "decoder.seg_layers.4.weight"
    assert init["inflated"][out_rows] == how
    second = load_checkpoint(s2 / "best.pt")
    assert second.meta.modalities == ("flair", "t1ce", "t1", "t2")
    assert second.meta.provenance["stage"] == 2
    assert second.meta.provenance["task"] == task


@pytest.mark.slow
def test_a_killed_volume_fusion_run_resumes_where_it_stopped(tmp_path, healthy_root):
    """As for BrainSegFounder's tasks (test_pretraining): SIGKILL after a saved step, resume, and the
    same steps, learning rates and losses as a run never interrupted (fusions are functions of
    seed and step)."""
    args = ["pretrain", "--config", "volume-fusion-tiny", "--data", healthy_root, *PRETRAIN_QUICK]
    args += ["model.architecture=resenc", "train.steps=3", "train.save_every=1", "train.val_every=3", *CPU]
    whole = cli([*args, "--out", tmp_path / "whole"])
    state = kill_after_first_state(args, tmp_path / "killed")
    assert torch.load(state, weights_only=True)["step"] < 3
    resumed = cli(["pretrain", "--resume", tmp_path / "killed", *CPU])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err

    def steps(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["type"] == "step"]

    a, b = steps(tmp_path / "whole"), steps(tmp_path / "killed")
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert ra["lr"] == rb["lr"]
        assert rb["fusion"] == pytest.approx(ra["fusion"], rel=1e-4), ra["step"]
    state_a = torch.load(tmp_path / "whole" / "state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "killed" / "state.pt", weights_only=True)
    assert state_a["best"]["val_fusion"] == pytest.approx(state_b["best"]["val_fusion"], rel=1e-4)
