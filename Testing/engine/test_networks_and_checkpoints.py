"""Model factory and checkpoint formats: ours, BrainSegFounder's released ones, plain MONAI."""

from __future__ import annotations

import pytest
import torch

from brainsegfounder.checkpoints import (
    ENCODER_PREFIX,
    ModelMeta,
    infer_network,
    load_checkpoint,
    load_strict,
    network_from_checkpoint,
    resolve_meta,
    save_checkpoint,
)
from brainsegfounder.errors import UserError
from brainsegfounder.networks import NetworkConfig, build_network, count_parameters, network_config

from helpers import monai_swinunetr, ssl_checkpoint
from swin_reference import MONAI_0_9_ORDER, swinunetr


@pytest.mark.parametrize(("size", "params"), [("62M", 62_191_941), ("64M", 64_076_853), ("70M", 69_731_589)])
def test_brainsegfounder_sizes_have_the_published_parameter_counts(size, params):
    assert count_parameters(build_network(network_config(size, "brats"))) == params


def test_presets_set_channels():
    assert network_config("tiny", "brats").in_channels == 4
    assert network_config("tiny", "brats").out_channels == 3
    assert network_config("tiny", "atlas").in_channels == 1
    assert network_config("tiny", "atlas").out_channels == 1
    with pytest.raises(UserError, match="unknown model size"):
        network_config("5M", "brats")


def outputs_equal(a, b, in_ch=4):
    torch.manual_seed(1)
    x = torch.randn(1, in_ch, 64, 64, 64)
    with torch.inference_mode():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


@pytest.mark.parametrize(
    "layout",
    [  # each builds and runs two networks: one layout in the quick tier
        pytest.param("state_dict", marks=pytest.mark.slow),
        pytest.param("epoch_best_acc", marks=pytest.mark.slow),
        pytest.param("module_prefix", marks=pytest.mark.slow),
        "plain",
        pytest.param("monai_model_key", marks=pytest.mark.slow),
    ],
)
def test_released_finetuned_formats_load_strictly_and_match_monai(tmp_path, layout):
    reference = monai_swinunetr(depths=(2, 2, 6, 2))
    state = reference.state_dict()
    payload = {
        "state_dict": {"state_dict": state},
        "epoch_best_acc": {"epoch": 120, "best_acc": 0.91, "state_dict": state},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "plain": state,
        "monai_model_key": {"model": state},
    }[layout]
    path = tmp_path / "released.pt"
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert ckpt.network.depths == (2, 2, 6, 2)
    assert (ckpt.network.feature_size, ckpt.network.in_channels, ckpt.network.out_channels) == (12, 4, 3)
    meta = resolve_meta(ckpt)
    assert meta.task == "brats"
    assert meta.modalities == ("flair", "t1ce", "t1", "t2")
    # the function the weights were trained as (MONAI 0.9-1.4's), not the installed MONAI's
    torch.manual_seed(1)
    x = torch.randn(1, 4, 64, 64, 64)
    with torch.inference_mode():
        ours = network_from_checkpoint(ckpt).eval()(x)
        assert torch.allclose(ours, swinunetr(x, state, (3, 6, 12, 24), MONAI_0_9_ORDER), atol=1e-4)


def test_architecture_inferred_for_other_heads_and_channels():
    state = monai_swinunetr(in_ch=1, out_ch=1, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), feature=12).state_dict()
    config = infer_network(state)
    assert config == NetworkConfig(
        in_channels=1,
        out_channels=1,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        feature_size=12,
        merge_order="monai0.9",
    )


def test_ssl_checkpoint_loads_encoder_only(tmp_path):
    encoder = ssl_checkpoint(tmp_path / "ssl.pt")
    ckpt = load_checkpoint(tmp_path / "ssl.pt")
    assert ckpt.kind == "ssl"
    assert ckpt.is_encoder_only
    assert ckpt.network.in_channels == 1
    assert ckpt.network.out_channels == 0
    model = build_network(NetworkConfig(in_channels=1, out_channels=1, feature_size=12))
    state = {k.removeprefix(ENCODER_PREFIX): v for k, v in ckpt.state_dict.items() if k.startswith(ENCODER_PREFIX)}
    assert len(state) == len(encoder)
    load_strict(model.swinViT, state, "encoder")
    for key, value in encoder.items():
        assert torch.equal(model.swinViT.state_dict()[key], value)
    with pytest.raises(UserError, match=r"self-supervised \(pretext-task\) checkpoint"):
        network_from_checkpoint(ckpt)


def test_our_checkpoint_round_trip(tmp_path):
    config = network_config("tiny", "atlas")
    torch.manual_seed(0)
    model = build_network(config)
    meta = ModelMeta.for_preset("atlas", config, name="stroke-tiny", version="1.2", provenance={"data": "synthetic"})
    save_checkpoint(tmp_path / "m.pt", model, meta)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.kind == "brainsegfounder"
    assert ckpt.meta.name == "stroke-tiny"
    assert ckpt.meta.version == "1.2"
    assert ckpt.meta.orientation == "RAS"
    assert ckpt.meta.modalities == ("t1",)
    assert ckpt.meta.provenance["data"] == "synthetic"
    assert "date" in ckpt.meta.provenance
    assert outputs_equal(network_from_checkpoint(ckpt), model, in_ch=1)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_saving_leaves_the_callers_metadata_as_it_was(tmp_path):
    config = network_config("tiny", "atlas")
    meta = ModelMeta.for_preset("atlas", config, provenance={"data": "synthetic"})
    save_checkpoint(tmp_path / "m.pt", build_network(config), meta)
    assert meta.provenance == {"data": "synthetic"}  # date and version went into the file only
    assert "date" in load_checkpoint(tmp_path / "m.pt").meta.provenance


def test_missing_keys_are_named(tmp_path):
    state = monai_swinunetr().state_dict()
    del state["decoder1.conv_block.conv1.conv.weight"]
    torch.save({"state_dict": state}, tmp_path / "broken.pt")
    with pytest.raises(UserError, match=r"1 missing \(decoder1\.conv_block\.conv1\.conv\.weight\)"):
        network_from_checkpoint(load_checkpoint(tmp_path / "broken.pt"))


def test_declared_config_that_does_not_fit_the_weights_is_named(tmp_path):
    config = network_config("tiny", "brats")
    model = build_network(config)
    meta = ModelMeta.for_preset("brats", NetworkConfig(4, 3, depths=(2, 2, 6, 2), feature_size=12))
    save_checkpoint(tmp_path / "m.pt", model, meta)
    with pytest.raises(UserError, match=r"missing .*swinViT\.layers3\.0\.blocks\.2"):
        network_from_checkpoint(load_checkpoint(tmp_path / "m.pt"))


class _Payload:
    """Unpickling this would create a file: proves refused checkpoints are never unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_objects_are_refused_never_unpickled(tmp_path):
    marker = tmp_path / "was_unpickled"
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save(monai_swinunetr(), tmp_path / "whole.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "whole.pt")


def test_truncated_and_foreign_checkpoints(tmp_path):
    torch.save({"state_dict": monai_swinunetr().state_dict()}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    from monai.networks.nets import UNet

    unet = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(8, 16), strides=(2,))
    torch.save(unet.state_dict(), tmp_path / "unet.pt")
    with pytest.raises(UserError, match="not a SwinUNETR"):
        load_checkpoint(tmp_path / "unet.pt")
