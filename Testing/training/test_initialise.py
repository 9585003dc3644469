"""Initialisation keeps pretrained weights: SSL encoders and full models, with channel inflation."""

from __future__ import annotations

import pytest
import torch

from brainsegfounder.errors import UserError

from helpers import run_cli, ssl_checkpoint
from quick import CPU, QUICK, quick_recipe


def test_ssl_one_channel_inflated_into_four(tmp_path, brats_root):
    from brainsegfounder_training.finetuning.initialise import build_model, resolve_task

    path = tmp_path / "ssl.pt"
    source = ssl_checkpoint(path, in_ch=1)
    recipe = quick_recipe(brats_root, f"init.checkpoint={path}")
    spec = resolve_task(recipe)
    model, report = build_model(spec, recipe)
    encoder = model.swinViT.state_dict()
    embed = "patch_embed.proj.weight"
    assert report.kind == "ssl"
    # BrainSegFounder's encoder was trained with MONAI 0.9's merge order: the new model keeps it
    assert spec.network.merge_order == "monai0.9"
    assert {m.order for m in model.modules() if hasattr(m, "order")} == {"monai0.9"}
    assert len(report.loaded) == len(source)
    assert report.inflated == {"swinViT." + embed: "flair<-mean, t1ce<-mean, t1<-mean, t2<-mean"}
    for key, value in source.items():  # every other encoder tensor is the pretrained one, bit for bit
        if key != embed:
            assert torch.equal(encoder[key], value), key
    # inflation: each of the 4 channels gets the 1-channel kernel scaled by 1/4, so the response
    # to four copies of an image equals the original's response to that image
    assert encoder[embed].shape[1] == 4
    assert torch.allclose(encoder[embed], source[embed].repeat(1, 4, 1, 1, 1) / 4)
    x = torch.randn(1, 1, 8, 8, 8)
    conv = torch.nn.functional.conv3d
    assert torch.allclose(
        conv(x.repeat(1, 4, 1, 1, 1), encoder[embed], stride=2), conv(x, source[embed], stride=2), atol=1e-5
    )
    assert {k.split(".")[0] for k in report.ignored} == {"rotation_head", "contrastive_head", "conv"}


def test_full_model_other_task_inflates_stem_and_reinitialises_head(tmp_path, brats_root, atlas_model):
    """A 1-channel stroke model as the start of a 4-channel BraTS model: the encoder, decoder and
    the inflated stems are kept, only the 1-channel output layer is new."""
    from brainsegfounder.checkpoints import load_checkpoint
    from brainsegfounder_training.finetuning.initialise import build_model, resolve_task

    recipe = quick_recipe(brats_root, f"init.checkpoint={atlas_model}")
    model, report = build_model(resolve_task(recipe), recipe)
    source = load_checkpoint(atlas_model).state_dict
    assert set(report.inflated) == {
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
    }
    assert report.reinitialised == ["out.conv.conv.bias", "out.conv.conv.weight"]
    state = model.state_dict()
    kept = [k for k in source if k not in report.inflated and not k.startswith("out.")]
    assert kept
    assert all(torch.equal(state[k], source[k]) for k in kept)
    assert report.inflated["encoder1.layer.conv1.conv.weight"] == "flair<-mean, t1ce<-mean, t1<-t1, t2<-mean"
    # the t1 channel carries the source's t1 kernel (scaled), the others its mean
    assert torch.allclose(
        state["encoder1.layer.conv1.conv.weight"][:, 2], source["encoder1.layer.conv1.conv.weight"][:, 0] / 4
    )


def test_depth_mismatch_is_an_error(tmp_path, brats_root):
    path = tmp_path / "ssl.pt"
    ssl_checkpoint(path)
    from brainsegfounder_training.finetuning.initialise import resolve_task

    with pytest.raises(UserError, match=r"model\.size=auto"):
        resolve_task(quick_recipe(brats_root, f"init.checkpoint={path}", "model.size=small"))


def test_base_model_with_other_inputs_is_refused(tmp_path, brats_root, brats_model, capsys):
    """A model for the same task but with its inputs in another order is refused (its channels
    would be fed the wrong contrasts)."""
    from brainsegfounder.checkpoints import load_checkpoint, save_checkpoint
    from brainsegfounder.networks import build_network
    from brainsegfounder_training.finetuning.initialise import resolve_task

    ckpt = load_checkpoint(brats_model)
    meta = ckpt.meta
    meta.modalities = ("t1", "t1ce", "flair", "t2")  # same task and schema, other channel order
    model = build_network(ckpt.network)
    model.load_state_dict(ckpt.state_dict)
    other = save_checkpoint(tmp_path / "other.pt", model, meta)
    with pytest.raises(UserError, match="takes t1, t1ce, flair, t2 but the recipe's task needs flair"):
        resolve_task(quick_recipe(brats_root, f"init.checkpoint={other}"))
    code, _, err = run_cli(
        [
            "finetune",
            "--config",
            "brats",
            "--base",
            other,
            "--data",
            brats_root,
            "--out",
            tmp_path / "run",
            "--progress",
            "none",
            *QUICK,
        ],
        capsys,
    )
    assert code == 2, err
    assert err.startswith("error: base model tiny-brats takes t1, t1ce, flair, t2"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_finetune_from_an_inflated_one_channel_checkpoint_end_to_end(tmp_path, train_root, capsys):
    """The CLI run the issue asks for: synthetic BraTS from a 1-channel SSL checkpoint (from scratch
    is what the other training tests run)."""
    import json

    path = tmp_path / "ssl.pt"
    ssl_checkpoint(path, in_ch=1)
    code, _out, err = run_cli(
        [
            "finetune",
            "--config",
            "brats",
            "--data",
            train_root,
            "--out",
            tmp_path / "run",
            *CPU,
            *QUICK,
            f"init.checkpoint={path}",
            "data.cache=disk",
        ],
        capsys,
    )
    assert code == 0, err
    init = json.loads((tmp_path / "run" / "init.json").read_text())
    assert init["kind"] == "ssl"
    assert list(init["inflated"]) == ["swinViT.patch_embed.proj.weight"]
    assert init["loaded_count"] > 100
    # the encoder is loaded; everything else (SwinUNETR's convolutional skips and decoder) starts fresh
    assert init["reinitialised"]
    assert not any(k.startswith("swinViT.") for k in init["reinitialised"])
    assert "out.conv.conv.weight" in init["reinitialised"]
    assert len(list((tmp_path / "run" / "cache").glob("*.pt"))) == 1  # the one case drawn, preprocessed on disk
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1
    assert set(summary["best"]["dice"]) == {"TC", "WT", "ET"}
    from brainsegfounder.checkpoints import load_checkpoint

    meta = load_checkpoint(tmp_path / "run" / "best.pt").meta
    assert meta.provenance["base"] == str(path)
    assert meta.modalities == ("flair", "t1ce", "t1", "t2")
    assert meta.network.merge_order == "monai0.9"  # written down with the weights
    assert meta.spacing_mm == (3.0, 3.0, 3.0)  # the training cases' voxel size, which inference resamples to
