"""The fast path: lean forward, precision choice, memory plan, thread and memory grants, CLI modes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from brainsegfounder import inference, resources
from brainsegfounder.inference import InferenceSettings, auto_precision, plan_memory, predict_probabilities
from brainsegfounder.low_memory_swin import LowMemorySwinUNETR
from brainsegfounder.networks import build_network, network_config

from helpers import run_cli, segment_args

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_network(network_config("tiny", "brats")).eval()


@pytest.mark.slow
def test_lean_forward_equals_monai_and_keeps_the_weights(tiny_net):
    x = torch.randn(2, 4, 64, 64, 96)
    with torch.inference_mode():
        expected = tiny_net(x)
        lean = LowMemorySwinUNETR(copy.deepcopy(tiny_net))
        got = lean(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # same parameters under the same names (the wrapper adds a "net." prefix only)
    assert {k.removeprefix("net."): v.shape for k, v in lean.state_dict().items()} == {
        k: v.shape for k, v in tiny_net.state_dict().items()
    }
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in lean.modules())


@pytest.mark.slow
def test_lean_forward_in_bf16_stays_close(tiny_net):
    x = torch.randn(1, 4, 64, 64, 64)
    lean = LowMemorySwinUNETR(copy.deepcopy(tiny_net))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = lean(x).float()
    with torch.inference_mode():
        expected = tiny_net(x)
    # bf16 keeps 8 bits of mantissa: agreement of the sign of the logits is what thresholds see
    agree = ((got > 0) == (expected > 0)).float().mean().item()
    assert agree > 0.97, agree


def test_precision_choice(monkeypatch):
    assert auto_precision(CPU) == "fp32"
    assert auto_precision(CPU, "bf16") == "bf16"
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert auto_precision(CPU, "bf16-native") == "bf16"
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    assert auto_precision(CPU, "bf16-native") == "fp32"
    with pytest.raises(Exception, match="precision must be one of"):
        InferenceSettings(precision="int8").validate()


def test_memory_plan_switches_to_low_mode_when_memory_is_short(monkeypatch):
    settings = InferenceSettings()
    shape = (4, 150, 180, 150)
    need = inference.estimate_peak_bytes(48, (128,) * 3, 1, shape)
    assert 2 * 2**30 < need < 4 * 2**30  # the measured 62M peak at 128^3 (lean, fp32) is 2.5 GiB over the weights
    monkeypatch.setattr(resources, "available_host_bytes", lambda: 16 * 2**30)
    plan = plan_memory(settings, CPU, (128,) * 3, 1, 48, shape)
    assert (plan.mode, plan.roi, plan.note) == ("normal", (128, 128, 128), "")
    monkeypatch.setattr(resources, "available_host_bytes", lambda: 3 * 2**30)
    plan = plan_memory(settings, CPU, (128,) * 3, 2, 48, shape)
    assert (plan.mode, plan.roi, plan.sw_batch_size) == ("low", (96, 96, 96), 1)
    assert "low-memory mode: 3.0 GiB free" in plan.note
    assert plan_memory(InferenceSettings(memory="normal"), CPU, (128,) * 3, 1, 48, shape).mode == "normal"
    assert plan_memory(InferenceSettings(memory="low"), CPU, (64,) * 3, 1, 12, shape).roi == (64, 64, 64)


@pytest.mark.slow
def test_low_memory_mode_is_chosen_and_reported(monkeypatch, tiny_net):
    # One window each way: a volume smaller than either window (the choice is what is tested here)
    volume = np.random.default_rng(3).standard_normal((4, 40, 40, 40)).astype(np.float32)
    messages = []
    normal, r1 = predict_probabilities(tiny_net, volume, (128,) * 3, InferenceSettings(memory="normal"), CPU)
    monkeypatch.setattr(resources, "available_host_bytes", lambda: 2**20)
    low, r2 = predict_probabilities(
        tiny_net, volume, (128,) * 3, InferenceSettings(), CPU, lambda s, d, t, m="": messages.append(m)
    )
    assert (r1.memory_mode, r1.roi, r2.memory_mode, r2.roi) == ("normal", (128,) * 3, "low", (96,) * 3)
    assert any("low-memory mode" in m for m in messages)
    assert "low-memory mode" in r2.notes[0]
    # (agreement between window sizes is the benchmark's to measure, on trained weights)
    assert low.shape == normal.shape
    assert np.all((low >= 0) & (low <= 1))


def test_cpu_and_memory_grants_from_cgroup_files(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(str(3 * 2**30))
    (tmp_path / "memory.current").write_text(str(2**30))
    monkeypatch.setattr(resources, "CGROUP", tmp_path)
    assert resources.cpu_quota() == 1.5
    assert resources.usable_cpus() == 1
    assert resources.available_host_bytes() <= 2 * 2**30
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert resources.cpu_quota() is None
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(resources, "usable_cpus", lambda: 1)
        assert resources.configure_threads() == 1
        assert torch.get_num_threads() == 1
        assert resources.configure_threads(2) == 2
        with pytest.raises(Exception, match="at least 1"):
            resources.configure_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_cli_low_memory_mode(tmp_path, capsys, brats_model, brats_inputs):
    """(Fast mode is each model's measured setting: test_fast_mode_and_spacing.py.)"""
    inputs, _ = brats_inputs
    for extra, roi, overlap in ((["--memory", "low", "--threads", "1"], 64, 0.5),):
        summary_path = tmp_path / "summary.json"
        code, _, err = run_cli(
            segment_args(brats_model, inputs, tmp_path / "l.nii.gz", "--summary", summary_path, *extra), capsys
        )
        assert code == 0, err
        info = json.loads(summary_path.read_text())["inference"]
        assert info["roi_size"] == [roi] * 3, (extra, info)
        assert info["overlap"] == overlap, (extra, info)
        assert info["model_s"] > 0
        assert info["precision"] in ("fp32", "bf16")
        if "low" in extra:
            assert info["memory_mode"] == "low"
            assert info["threads"] == 1
