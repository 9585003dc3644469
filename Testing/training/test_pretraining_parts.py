"""Pretraining parts: the SSL head's layout (BrainSegFounder's release loads strictly), the pretext
tasks, cohort discovery, the streaming data with skipped subjects, stage-2 initialisation."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainsegfounder.errors import UserError

from helpers import refused_pretrain

TINY = dict(depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), feature_size=12)


def release_state(in_channels: int, feature_size: int = 12, seed: int = 0) -> dict:
    """A state dict laid out like BrainSegFounder's SSL release, built without our head: the Swin
    encoder of MONAI's SwinUNETR plus the 16 head tensors with the release's shapes."""
    from brainsegfounder.networks import NetworkConfig, build_network

    torch.manual_seed(seed)
    config = NetworkConfig(in_channels=in_channels, out_channels=3, **{**TINY, "feature_size": feature_size})
    net = build_network(config)
    state = {f"module.swinViT.{k}": v.clone() for k, v in net.swinViT.state_dict().items()}
    dim = 16 * feature_size
    shapes = {
        "rotation_head.weight": (4, dim),
        "rotation_head.bias": (4,),
        "contrastive_head.weight": (512, dim),
        "contrastive_head.bias": (512,),
        "conv.0.weight": (dim // 2, dim, 3, 3, 3),
        "conv.0.bias": (dim // 2,),
        "conv.4.weight": (dim // 4, dim // 2, 3, 3, 3),
        "conv.4.bias": (dim // 4,),
        "conv.8.weight": (dim // 8, dim // 4, 3, 3, 3),
        "conv.8.bias": (dim // 8,),
        "conv.12.weight": (dim // 16, dim // 8, 3, 3, 3),
        "conv.12.bias": (dim // 16,),
        "conv.16.weight": (dim // 16, dim // 16, 3, 3, 3),
        "conv.16.bias": (dim // 16,),
        "conv.20.weight": (in_channels, dim // 16, 1, 1, 1),
        "conv.20.bias": (in_channels,),
    }
    state.update({f"module.{k}": torch.randn(s) for k, s in shapes.items()})
    return state


def test_head_has_the_release_layout_at_full_size():
    """62M, 2 inputs: the shapes FACTS gives for BrainSegFounder's f48 head (768-channel bottleneck)."""
    from brainsegfounder.networks import SIZES
    from brainsegfounder_training.pretraining.head import SSLHead, ssl_network_config

    head = SSLHead(ssl_network_config(2, **SIZES["62M"]))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items() if not k.startswith("swinViT.")}
    assert shapes == {
        "rotation_head.weight": (4, 768),
        "rotation_head.bias": (4,),
        "contrastive_head.weight": (512, 768),
        "contrastive_head.bias": (512,),
        "conv.0.weight": (384, 768, 3, 3, 3),
        "conv.0.bias": (384,),
        "conv.4.weight": (192, 384, 3, 3, 3),
        "conv.4.bias": (192,),
        "conv.8.weight": (96, 192, 3, 3, 3),
        "conv.8.bias": (96,),
        "conv.12.weight": (48, 96, 3, 3, 3),
        "conv.12.bias": (48,),
        "conv.16.weight": (48, 48, 3, 3, 3),
        "conv.16.bias": (48,),
        "conv.20.weight": (2, 48, 1, 1, 1),
        "conv.20.bias": (2,),
    }


def test_release_ssl_checkpoint_loads_strictly_into_our_head(tmp_path):
    from brainsegfounder.checkpoints import load_checkpoint
    from brainsegfounder_training.pretraining.head import SSLHead, load_into_head, ssl_network_config

    state = release_state(in_channels=1)
    torch.save({"global_step": 1000, "epoch": 3, "state_dict": state, "optimizer": {}}, tmp_path / "ssl.pt")
    ckpt = load_checkpoint(tmp_path / "ssl.pt")
    assert ckpt.kind == "ssl"
    assert ckpt.network.in_channels == 1
    head = SSLHead(ssl_network_config(1, **TINY))
    report = load_into_head(head, ckpt, ["t1"])
    assert not report.inflated
    assert not report.reinitialised
    assert not report.ignored
    mine = head.state_dict()
    assert len(report.loaded) == len(state) == len(mine)
    for key, value in state.items():
        assert torch.equal(mine[key[len("module.") :]], value), key
    rotation, embedding, reconstruction = head(torch.randn(2, 1, 64, 64, 64))
    assert rotation.shape == (2, 4)
    assert embedding.shape == (2, 512)
    assert reconstruction.shape == (2, 1, 64, 64, 64)


def test_release_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    from brainsegfounder.checkpoints import load_checkpoint
    from brainsegfounder_training.pretraining.head import SSLHead, load_into_head, ssl_network_config

    state = release_state(in_channels=1)
    state["module.rotation_head.weight"] = torch.randn(4, 100)
    torch.save({"global_step": 1, "epoch": 1, "state_dict": state, "optimizer": {}}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"rotation_head\.weight"):
        load_into_head(SSLHead(ssl_network_config(1, **TINY)), load_checkpoint(tmp_path / "bad.pt"), ["t1"])


def test_stage_two_keeps_every_pretrained_encoder_weight(tmp_path):
    """[t1, flair] -> [flair, t1ce, t1, t2]: encoder tensors bit for bit; the patch embedding's
    named channels copied and the others the mean, scaled 2/4; reconstruction rows mapped."""
    from brainsegfounder.checkpoints import load_checkpoint
    from brainsegfounder_training.pretraining.head import SSLHead, load_into_head, ssl_network_config

    state = {k[len("module.") :]: v for k, v in release_state(in_channels=2, seed=3).items()}
    torch.save({"state_dict": state, "global_step": 1, "epoch": 1, "optimizer": {}}, tmp_path / "stage1.pt")
    head = SSLHead(ssl_network_config(4, **TINY))
    report = load_into_head(
        head, load_checkpoint(tmp_path / "stage1.pt"), ["flair", "t1ce", "t1", "t2"], source_modalities=["t1", "flair"]
    )
    mine = head.state_dict()
    embed = "swinViT.patch_embed.proj.weight"
    assert set(report.inflated) == {embed, "conv.20.weight", "conv.20.bias"}
    for key, value in state.items():
        if key not in report.inflated:
            assert torch.equal(mine[key], value), key
    source = state[embed]
    assert torch.allclose(mine[embed][:, 0], source[:, 1] * 0.5)  # flair
    assert torch.allclose(mine[embed][:, 2], source[:, 0] * 0.5)  # t1
    assert torch.allclose(mine[embed][:, 1], source.mean(1) * 0.5)  # t1ce: no such channel in stage 1
    assert torch.allclose(mine["conv.20.weight"][0], state["conv.20.weight"][1])  # flair row, unscaled
    assert torch.allclose(mine["conv.20.bias"][3], state["conv.20.bias"].mean())  # t2 row: the mean


@pytest.mark.parametrize(("plane", "dims"), [("original", (2, 3)), ("axial", (1, 2))])
def test_rotation_labels_match_the_rotation(plane, dims):
    from brainsegfounder_training.pretraining.pretext import rotate

    crops = torch.randn(6, 2, 8, 8, 8)
    rotated, ks = rotate(crops, np.random.default_rng(1), plane)
    assert set(ks.tolist()) <= {0, 1, 2, 3}
    assert len(set(ks.tolist())) > 1
    for crop, turned, k in zip(crops, rotated, ks.tolist(), strict=True):
        assert torch.equal(turned, torch.rot90(crop, k, dims=dims))


def _coordinates(shape):
    """A (1, i, j, k) crop whose voxel holds 10000 i + 100 j + k: each value tells where it came from."""
    i, j, k = torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij")
    return (10000 * i + 100 * j + k).float()[None]


def test_the_default_rotation_turns_the_last_two_axes_as_brainsegfounder_did():
    """BrainSegFounder rotates its (B, C, H, W, D) batch over dims (3, 4): each crop's first spatial
    axis stays where it is, the other two are turned. Our default must do the same."""
    from brainsegfounder_training.pretraining.pretext import PretextSettings, make_views, rotate

    crop = _coordinates((4, 6, 6))
    crops = crop.expand(8, -1, -1, -1, -1).clone()
    rotated, ks = rotate(crops, np.random.default_rng(0))
    assert set(ks.tolist()) == {0, 1, 2, 3}
    for turned, k in zip(rotated, ks.tolist(), strict=True):
        i, j, kk = turned[0] // 10000, turned[0] // 100 % 100, turned[0] % 100
        assert torch.equal(i, _coordinates((4, 6, 6))[0] // 10000)  # the first axis never moves
        assert torch.equal(torch.rot90(turned, -k, dims=(2, 3)), crop)
        if k:
            assert not torch.equal(j, _coordinates((4, 6, 6))[0] // 100 % 100)  # the last two do
            assert not torch.equal(kk, _coordinates((4, 6, 6))[0] % 100)
    # make_views' targets are turned the same way when no setting names a plane
    _, targets, rotations = make_views(
        crops, np.random.default_rng(4), torch.Generator().manual_seed(0), PretextSettings()
    )
    for turned, k in zip(targets, rotations.tolist(), strict=True):
        assert torch.equal(turned, torch.rot90(crop, k, dims=(2, 3)))


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_crop_axes_run_left_right_then_anterior_posterior_then_inferior_superior(orientation):
    """Which anatomical plane each rotation option is: an image stored in another orientation (PIR),
    read as pretraining reads it, has its left-right axis first, then anterior-posterior, then
    inferior-superior. So the default plane (the last two axes) is sagittal, the axial option axial."""
    import SimpleITK as sitk

    from brainsegfounder.segment import to_network_array

    pir = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # columns: index axes i, j, k point posterior, inferior, right
    grid = sitk.GetImageFromArray(np.zeros((7, 6, 5), np.float32))  # (k, j, i) array order
    grid.SetDirection(pir)
    world = np.asarray(
        [[[grid.TransformIndexToPhysicalPoint((i, j, k)) for i in range(5)] for j in range(6)] for k in range(7)]
    )  # (k, j, i, 3): x, y, z in LPS millimetres
    for axis, name in enumerate(("left-right", "anterior-posterior", "inferior-superior")):
        image = sitk.GetImageFromArray(world[..., axis].astype(np.float32))
        image.SetDirection(pir)
        array = to_network_array([image], orientation)[0]
        varies = [bool(np.ptp(array, axis=a).max() > 0) for a in range(3)]
        assert varies == [a == axis for a in range(3)], (name, varies)


def test_corruption_replaces_cuboids_and_leaves_the_targets():
    from brainsegfounder_training.pretraining.pretext import corrupt

    views = torch.randn(4, 2, 32, 32, 32)
    keep = views.clone()
    out = corrupt(views, np.random.default_rng(0), torch.Generator().manual_seed(0), max_drop=0.3, max_block=0.25)
    assert torch.equal(views, keep)
    changed = (out != views).any(dim=1).float().mean(dim=(1, 2, 3))
    assert (changed > 0).any()
    assert (changed < 0.75).all()
    same = corrupt(views, np.random.default_rng(0), torch.Generator().manual_seed(0), max_drop=0.3, max_block=0.25)
    assert torch.equal(out, same)  # a function of the seeds: resumed runs corrupt alike
    assert torch.equal(
        corrupt(views, np.random.default_rng(0), torch.Generator(), max_drop=0.0, cross_sample=False), views
    )


def test_nt_xent_matches_a_hand_computation():
    from brainsegfounder_training.pretraining.pretext import nt_xent

    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    a = torch.cat([z1, z2])
    a = a / a.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        sims = {j: float(a[i] @ a[j]) / 0.5 for j in range(6) if j != i}
        total += -sims[partner] + np.log(sum(np.exp(s) for s in sims.values()))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(total / 6, rel=1e-5)
    assert nt_xent(z1, z1, 0.5) < nt_xent(z1, z2, 0.5)  # identical views agree best


def test_gathered_negatives_equal_one_big_batch(tmp_path):
    """Two gloo processes with gathered negatives: the mean loss is the full-batch loss, and each
    process's gradient (DDP then averages) is the full-batch gradient times the process count."""
    from brainsegfounder_training.pretraining.pretext import nt_xent

    worker = Path(__file__).with_name("gather_worker.py")
    ranks = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp_path / "init"), str(tmp_path)],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for rank in ranks:
        _, err = rank.communicate(timeout=300)
        assert rank.returncode == 0, err[-3000:]
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    full = nt_xent(z1, z2, 0.5)
    full.backward()
    assert float(np.mean([p["loss"] for p in parts])) == pytest.approx(full.item(), rel=1e-5)
    for r, part in enumerate(parts):
        assert torch.allclose(part["g1"], 2 * z1.grad[r * 2 : (r + 1) * 2], atol=1e-6)
        assert torch.allclose(part["g2"], 2 * z2.grad[r * 2 : (r + 1) * 2], atol=1e-6)
    local = nt_xent(z1[:2], z2[:2], 0.5)  # negatives of one process only: a different loss
    assert abs(local.item() - parts[0]["loss"].item()) > 1e-3


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_uk_biobank_style_downloads_are_joined_per_subject_and_visit(tmp_path):
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    _touch(tmp_path / "1000001_20252_2_0" / "T1" / "T1_brain_to_MNI.nii.gz")
    _touch(tmp_path / "1000001_20253_2_0" / "T2_FLAIR" / "T2_FLAIR_brain_to_MNI.nii.gz")
    _touch(tmp_path / "1000001_20252_3_0" / "T1" / "T1_brain_to_MNI.nii.gz")  # repeat visit, no FLAIR
    _touch(tmp_path / "1000002" / "T1" / "T1_brain_to_MNI.nii.gz")
    _touch(tmp_path / "1000002" / "T2_FLAIR" / "T2_FLAIR_brain_to_MNI.nii.gz")
    subjects, left_out = discover_subjects(tmp_path, ["t1", "flair"])
    assert [s.subject_id for s in subjects] == ["1000001_2_0", "1000002"]
    assert subjects[0].images["flair"].endswith("1000001_20253_2_0/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz")
    assert list(subjects[0].images) == ["t1", "flair"]
    assert left_out == [{"id": "1000001_3_0", "reason": "no flair image"}]
    only_t1, _ = discover_subjects(tmp_path, ["t1"])
    assert len(only_t1) == 3


def test_bids_sessions_and_contrast_enhanced_t1(tmp_path):
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    anat = tmp_path / "sub-01" / "ses-1" / "anat"
    for name in (
        "sub-01_ses-1_T1w.nii.gz",
        "sub-01_ses-1_ce-gd_T1w.nii.gz",
        "sub-01_ses-1_FLAIR.nii.gz",
        "sub-01_ses-1_T2w.nii.gz",
        "sub-01_ses-1_label-L_desc-T1lesion_mask.nii.gz",
    ):
        _touch(anat / name)
    _touch(tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii")
    subjects, left_out = discover_subjects(tmp_path, ["flair", "t1ce", "t1", "t2"])
    assert [s.subject_id for s in subjects] == ["sub-01_ses-1"]
    assert subjects[0].images["t1ce"].endswith("sub-01_ses-1_ce-gd_T1w.nii.gz")
    assert subjects[0].images["t1"].endswith("sub-01_ses-1_T1w.nii.gz")
    assert left_out[0]["id"] == "sub-02"
    t1, _ = discover_subjects(tmp_path, ["t1"])
    assert len(t1) == 2


def test_plain_folders_and_datalists(tmp_path):
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    for subject in ("a", "b"):
        _touch(tmp_path / "plain" / subject / f"{subject}_T1w.nii.gz")
        _touch(tmp_path / "plain" / subject / "flair.nrrd")
    subjects, _ = discover_subjects(tmp_path / "plain", ["t1", "flair"])
    assert [s.subject_id for s in subjects] == ["a", "b"]
    assert subjects[1].images["flair"].endswith("b/flair.nrrd")

    root = tmp_path / "listed"
    (root / "x").mkdir(parents=True)
    datalist = {
        "description": {"modalities": ["flair", "t1"]},
        "training": [{"image": ["x/f.nii.gz", "x/t.nii.gz"]}, {"image": {"T1": "y/t.nii.gz"}}],
        "validation": [{"id": "v1", "image": ["v/f.nii.gz", "v/t.nii.gz"]}],
    }
    (root / "datalist.json").write_text(json.dumps(datalist))
    subjects, left_out = discover_subjects(root, ["t1", "flair"])
    assert len(subjects) == 1
    assert subjects[0].images["t1"] == str((root / "x/t.nii.gz").resolve())
    assert left_out == [{"id": "y", "reason": "no flair image"}]
    val, _ = discover_subjects(root, ["t1", "flair"], section="validation")
    assert [s.subject_id for s in val] == ["v1"]
    datalist["training"].append({"image": ["../outside.nii.gz", "x/t.nii.gz"]})
    (root / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(UserError, match="outside its folder"):
        discover_subjects(root, ["t1", "flair"])
    with pytest.raises(UserError, match="no subjects with t2"):
        discover_subjects(tmp_path / "plain", ["t2"])


def test_stream_skips_a_corrupt_subject_and_says_which(tmp_path, healthy_root):
    """A truncated FLAIR: the next subject takes its place and the skip is reported with the item."""
    from brainsegfounder_training.pretraining.data import CropStream
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    root = tmp_path / "cohort"
    shutil.copytree(healthy_root, root)
    flair = root / "1000002" / "T2_FLAIR" / "T2_FLAIR_brain_to_MNI.nii.gz"
    flair.write_bytes(gzip.compress(gzip.decompress(flair.read_bytes())[:2000]))
    subjects, _ = discover_subjects(root, ["t1", "flair"])
    stream = CropStream(subjects, "LPS", (64, 64, 64), crops=2)
    item = stream[(1, 123)]
    assert item["id"] == "1000003"
    assert [s["id"] for s in item["skipped"]] == ["1000002"]
    assert "truncated" in item["skipped"][0]["reason"], item["skipped"]
    assert item["image"].shape == (2, 2, 64, 64, 64)
    assert item["image"].dtype == torch.float32
    again = stream[(1, 123)]
    assert torch.equal(item["image"], again["image"])  # an item is a function of its key
    assert not torch.equal(stream[(1, 124)]["image"], item["image"])
    brain = item["image"][item["image"] != 0]
    assert abs(float(brain.mean())) < 0.5
    assert 0.5 < float(brain.std()) < 1.5
    dead = CropStream(subjects[1:2], "LPS", (64, 64, 64), crops=1, max_tries=3)
    with pytest.raises(UserError, match="3 subjects in a row could not be read"):
        dead[(0, 1)]


def test_stream_positions_are_shared_out_without_overlap():
    from brainsegfounder_training.pretraining.data import StreamSampler

    ranks = [list(StreamSampler(10, 2, seed=4, start=0, end=5, rank=r, world=2)) for r in range(2)]
    seeds = [s for part in ranks for _, s in part]
    assert len(set(seeds)) == 20  # every position once
    indices = [i for step in range(5) for r in range(2) for i, _ in ranks[r][step * 2 : (step + 1) * 2]]
    assert sorted(indices[:10]) == list(range(10))
    assert sorted(indices[10:]) == list(range(10))
    resumed = list(StreamSampler(10, 2, seed=4, start=3, end=5, rank=1, world=2))
    assert resumed == ranks[1][6:]  # a resumed run draws what the uninterrupted one would


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.size=62M"], r"init checkpoint is depths .* feature size 12, but model.size 62M differs"),
        (["model.roi=[96,64,96]"], r"last two sides must be equal .*rotation_plane original"),
        (["model.roi=[64,96,96]", "ssl.rotation_plane=axial"], r"first two sides must be equal"),
        (["ssl.rotation_plane=coronal"], r"rotation_plane is 'coronal'; choose one of original, axial"),
        (["train.batch_size=1", "train.crops_per_volume=1"], r"contrastive coding needs at least 2 crops"),
    ],
)
def test_bad_pretraining_settings_fail_cleanly_and_write_nothing(tmp_path, healthy_root, capsys, overrides, message):
    torch.save(
        {"global_step": 1, "epoch": 1, "state_dict": release_state(in_channels=1), "optimizer": {}}, tmp_path / "ssl.pt"
    )
    args = ["--config", "stage2-atlas", "--init", tmp_path / "ssl.pt", "--data", healthy_root, *overrides]
    refused_pretrain(capsys, tmp_path / "run", message, *args)


@pytest.mark.parametrize(
    ("name", "lr", "steps"),
    [
        ("stage1-ukb", 4e-4, 100_000),  # MONAI's SSL recipe, BrainSegFounder's stage-1 default
        ("stage2-brats", 6e-6, 50_000),  # BrainSegFounder's BraTS stage-2 launch script
        ("stage2-atlas", 1e-4, 50_000),  # its ATLAS stage-2 lr; the BraTS stage-2 length
    ],
)
def test_shipped_pretraining_recipes_have_the_published_lr_and_length(name, lr, steps):
    """Stage 2 continues from stage 1 at a far lower lr: a stage-2 recipe that inherits the stage-1
    default again (4e-4, 67x BrainSegFounder's 6e-6) fails here."""
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    recipe = load_pretrain_recipe(name, ["init.checkpoint=stage1.pt"])
    assert recipe["train"]["lr"] == pytest.approx(lr)
    assert recipe["train"]["steps"] == steps
    assert recipe["train"]["warmup_steps"] == 500
    assert recipe["train"]["weight_decay"] == pytest.approx(0.1)
    assert recipe["ssl"]["rotation_plane"] == "original"


def test_a_run_started_before_the_rotation_plane_was_a_setting_resumes_in_its_axial_plane(tmp_path):
    """Runs saved before ``ssl.rotation_plane`` existed rotated axially; the default is now the
    original plane, which a resumed run must not switch to halfway."""
    import yaml

    from brainsegfounder_training.harness.recipe import dump
    from brainsegfounder_training.pretraining.recipe import keep_started_rotation_plane, load_pretrain_recipe

    recipe = load_pretrain_recipe("stage1-ukb")
    saved = tmp_path / "recipe.yaml"
    saved.write_text(dump(recipe))
    assert keep_started_rotation_plane(load_pretrain_recipe(str(saved)), saved)["ssl"]["rotation_plane"] == "original"
    old = yaml.safe_load(saved.read_text())
    del old["ssl"]["rotation_plane"]
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    assert keep_started_rotation_plane(load_pretrain_recipe(str(saved)), saved)["ssl"]["rotation_plane"] == "axial"
