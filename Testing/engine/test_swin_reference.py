"""The network computes BrainSegFounder's function: checked against SwinUNETR v1 as MONAI 0.9-1.4
defined it (swin_reference.py, plain torch), for both merge orders, in every path that runs
it: the checkpoint loader, the lean inference forward, the SSL head and fine-tuning."""

from __future__ import annotations

import pytest
import torch

from brainsegfounder.checkpoints import ModelMeta, load_checkpoint, network_from_checkpoint, save_checkpoint
from brainsegfounder.low_memory_swin import LowMemorySwinUNETR
from brainsegfounder.networks import MERGE_ORDER_NAMES, NetworkConfig, build_network, network_config
from brainsegfounder.patch_merging import MERGE_ORDERS
from brainsegfounder.registry import resolve_model

from helpers import monai_swinunetr, run_cli, ssl_checkpoint
from swin_reference import MONAI_0_9_ORDER, MONAI_1_5_ORDER, swin_encoder, swinunetr

HEADS = (3, 6, 12, 24)
ORDERS = {"monai0.9": MONAI_0_9_ORDER, "monai1.5": MONAI_1_5_ORDER}


def trained_like(net, seed=3):
    """Weights as training leaves them: norms and merging layers away from their initial values
    (at initialisation the layer norms are 1 and 0, which hides part of the maths)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name or "downsample" in name:
                p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A BrainSegFounder fine-tuned checkpoint ({epoch, best_acc, state_dict}, plain keys),
    written by MONAI directly, and an input at the smallest ROI (64^3: windows padded at
    stage 1-3, shrunk to 4^3 at stage 4)."""
    path = tmp_path_factory.mktemp("released") / "model_final.pt"
    net = trained_like(monai_swinunetr(depths=(2, 2, 2, 2)))
    torch.save({"epoch": 300, "best_acc": 0.91, "state_dict": net.state_dict()}, path)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        reference = swinunetr(x, net.state_dict(), HEADS, MONAI_0_9_ORDER)
    return path, net, x, reference


def test_the_engine_and_the_reference_name_the_same_merge_orders():
    assert set(MERGE_ORDER_NAMES) == set(MERGE_ORDERS)
    assert {name: MERGE_ORDERS[name] for name in ORDERS} == ORDERS


def test_a_brainsegfounder_checkpoint_computes_the_function_it_was_trained_as(released):
    path, _, x, reference = released
    ckpt = load_checkpoint(path)
    assert (ckpt.kind, ckpt.network.merge_order) == ("finetuned", "monai0.9")
    with torch.no_grad():
        ours = network_from_checkpoint(ckpt).eval()(x)
        lean = LowMemorySwinUNETR(network_from_checkpoint(ckpt, use_flash_attention=True))(x)
    assert torch.allclose(ours, reference, atol=1e-4), float((ours - reference).abs().max())
    assert torch.allclose(lean, reference, atol=1e-4), float((lean - reference).abs().max())


def test_monai_as_installed_computes_another_function_with_those_weights(released):
    """What the engine guards against: MONAI >= 1.5 loads the file strictly and says nothing."""
    _, net, x, reference = released
    with torch.no_grad():
        moved = (net(x) - reference).abs().max()
    assert moved > 1e-2, float(moved)


@pytest.mark.slow
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_each_order_equals_the_reference_in_that_order(order):
    """The encoder alone (the decoder is checked above), on a box whose stage-3 side (12) is
    padded to two windows and whose depth 4 at stage 3 shifts windows twice."""
    config = NetworkConfig(in_channels=2, out_channels=2, feature_size=12, depths=(2, 2, 4, 2), merge_order=order)
    torch.manual_seed(1)
    encoder = trained_like(build_network(config)).swinViT.eval()
    x = torch.randn(1, 2, 64, 96, 64)
    with torch.no_grad():
        ours = encoder(x)
        reference = swin_encoder(x, encoder.state_dict(), HEADS, ORDERS[order])
    for level in range(5):
        assert torch.allclose(ours[level], reference[level], atol=1e-4), level


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_a_model_we_save_keeps_its_merge_order(tmp_path, order):
    config = NetworkConfig(**{**network_config("tiny", "brats").to_dict(), "merge_order": order})
    net = trained_like(build_network(config))
    meta = ModelMeta.for_preset("brats", config, name="m", trained_on="real")
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", net, meta))
    assert ckpt.network.merge_order == order
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(network_from_checkpoint(ckpt).swinViT(x)[4], net.swinViT(x)[4])


def test_a_checkpoint_of_ours_from_before_the_field_keeps_the_order_it_was_trained_with(tmp_path):
    """Files written before merge_order was recorded were trained with MONAI 1.6 (monai1.5)."""
    meta = ModelMeta.for_preset("brats", network_config("tiny", "brats"), name="old").to_dict()
    del meta["network"]["merge_order"]
    state = build_network(network_config("tiny", "brats")).state_dict()
    torch.save({"format": "brainsegfounder", "format_version": 1, "meta": meta, "state_dict": state}, tmp_path / "o.pt")
    assert load_checkpoint(tmp_path / "o.pt").network.merge_order == "monai1.5"


def test_new_models_get_the_distinct_order():
    assert network_config("tiny", "brats").merge_order == "monai1.5"


@pytest.mark.slow
def test_a_released_ssl_encoder_runs_in_its_order_in_the_pretraining_head(tmp_path):
    from brainsegfounder_training.pretraining.head import SSLHead, load_into_head, ssl_config_of_recipe

    ssl_checkpoint(tmp_path / "ssl.pt", in_ch=1)
    ckpt = load_checkpoint(tmp_path / "ssl.pt")
    recipe = {"model": {"size": "auto"}, "modalities": ["t1"]}
    config = ssl_config_of_recipe(recipe, ckpt)
    assert config.merge_order == "monai0.9"
    head = SSLHead(config).eval()
    load_into_head(head, ckpt, ["t1"], ["t1"])
    encoder = trained_like(head.swinViT)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        ours = encoder(x)[4]
        reference = swin_encoder(x, encoder.state_dict(), HEADS, MONAI_0_9_ORDER)[4]
    assert torch.allclose(ours, reference, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_the_merging_layers_train_in_either_order(order):
    config = NetworkConfig(in_channels=1, out_channels=1, feature_size=12, merge_order=order)
    encoder = build_network(config, use_checkpoint=True).swinViT  # gradient checkpointing, as training runs
    encoder(torch.randn(1, 1, 64, 64, 64))[4].mean().backward()
    grad = encoder.layers2[0].downsample.reduction.weight.grad
    assert grad is not None
    assert grad.abs().sum() > 0


def test_a_plain_file_trained_with_the_new_order_is_registered_with_it(tmp_path, home, capsys):
    """A plain MONAI state dict says nothing about its order: read as MONAI 0.9's unless the
    user says otherwise when registering it; then the order is written into the registered copy."""
    config = NetworkConfig(**{**network_config("tiny", "brats").to_dict(), "merge_order": "monai1.5"})
    net = trained_like(build_network(config)).eval()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt").network.merge_order == "monai0.9"

    code, _, err = run_cli(
        ["models", "register", tmp_path / "plain.pt", "--name", "p", "--merge-order", "monai1.5"], capsys
    )
    assert code == 0, err
    registered = load_checkpoint(resolve_model("p"))
    assert (registered.kind, registered.network.merge_order) == ("brainsegfounder", "monai1.5")
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(network_from_checkpoint(registered).swinViT(x)[4], net.swinViT(x)[4])

    code, _, err = run_cli(["models", "register", resolve_model("p"), "--merge-order", "monai0.9"], capsys)
    assert code == 2
    assert err.startswith("error: p.pt states merge order monai1.5 in its metadata; a merge order can only be given")
