"""The exported CPU runtimes (OpenVINO, ONNX Runtime): same labels as PyTorch, one export per
model and window size, and PyTorch whenever an export is missing, wrong or fails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from brainsegfounder import cpu_runtimes
from brainsegfounder.cpu_runtimes import export_folder, installed, resolve_runtime
from brainsegfounder.errors import UserError
from brainsegfounder.inference import InferenceSettings, cpu_has_native_bf16
from brainsegfounder.segment import segment_files

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
EXPORTED = [r for r in ("openvino", "onnxruntime") if installed(r)]


@pytest.fixture(autouse=True)
def product_default(monkeypatch):
    """This file tests what "auto" means for users: without the suite's PyTorch setting (conftest.py)."""
    monkeypatch.delenv(cpu_runtimes.SITE_DEFAULT_VARIABLE, raising=False)


@pytest.fixture
def model(tmp_path, brats_model):
    """A private copy of the tiny BraTS model: its exports start from nothing."""
    return shutil.copy(brats_model, tmp_path / "tiny-brats.pt")


def segment(model, inputs, output, runtime, **settings):
    settings = InferenceSettings(runtime=runtime, **settings)
    summary = segment_files(str(model), inputs, output, device="cpu", settings=settings)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output))), summary


def exports(model):
    return sorted(p.name for p in export_folder(model).glob("*.onnx"))


@pytest.mark.parametrize("runtime", EXPORTED)
def test_an_exported_runtime_labels_every_voxel_as_pytorch_does(tmp_path, model, brats_inputs, runtime):
    inputs, _ = brats_inputs
    expected, by_torch = segment(model, inputs, tmp_path / "torch.nii.gz", "torch")
    # fp32 asked for: the export must compute the model's function (the bf16 default rounds).
    got, summary = segment(model, inputs, tmp_path / f"{runtime}.nii.gz", runtime, precision="fp32")
    assert by_torch["inference"]["runtime"] == "torch"
    assert summary["inference"]["runtime"] == runtime
    labelled = (expected > 0).sum()
    assert labelled > 1000  # the tiny model labels about half the brain: a real comparison
    # Its outputs sit near the threshold by design, so float round-off may flip a voxel or two.
    assert (got != expected).sum() <= 1e-3 * labelled, (got != expected).sum()
    record = json.loads(next(export_folder(model).glob("*.json")).read_text())
    assert record["checked"][runtime]["max_probability_difference"] <= cpu_runtimes.TOLERANCE


@pytest.mark.skipif(not installed("openvino"), reason="OpenVINO is not installed")
def test_the_default_on_the_cpu_is_openvino_exported_once_per_model(tmp_path, model, brats_inputs, monkeypatch):
    inputs, _ = brats_inputs
    _, first = segment(model, inputs, tmp_path / "a.nii.gz", "auto")
    assert first["inference"]["runtime"] == "openvino"
    assert first["inference"]["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")  # bf16 where native
    made = {p: p.stat().st_mtime_ns for p in export_folder(model).glob("*.onnx")}
    assert len(made) == 1
    assert next(iter(made)).parent == model.parent / ".brainsegfounder" / "exports"  # beside the model

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_second_export)
    _, second = segment(model, inputs, tmp_path / "b.nii.gz", "auto")
    assert second["inference"]["runtime"] == "openvino"
    assert {p: p.stat().st_mtime_ns for p in export_folder(model).glob("*.onnx")} == made


@pytest.mark.skipif(not EXPORTED, reason="neither OpenVINO nor ONNX Runtime is installed")
def test_a_changed_export_is_made_again_before_it_is_used(tmp_path, model, brats_inputs):
    inputs, _ = brats_inputs
    runtime = EXPORTED[0]
    expected, _ = segment(model, inputs, tmp_path / "a.nii.gz", runtime)
    (onnx,) = export_folder(model).glob("*.onnx")
    good = onnx.read_bytes()
    onnx.write_bytes(good[: len(good) // 2])  # a truncated (or otherwise edited) export
    got, summary = segment(model, inputs, tmp_path / "b.nii.gz", runtime)
    assert summary["inference"]["runtime"] == runtime
    assert np.array_equal(got, expected)
    assert onnx.stat().st_size == len(good)


@pytest.mark.skipif(not EXPORTED, reason="neither OpenVINO nor ONNX Runtime is installed")
def test_an_export_that_differs_from_pytorch_is_not_used(tmp_path, model, brats_inputs, monkeypatch):
    inputs, _ = brats_inputs
    expected, _ = segment(model, inputs, tmp_path / "torch.nii.gz", "torch")
    monkeypatch.setattr(cpu_runtimes, "TOLERANCE", -1.0)  # no export can pass: as if it computed another function
    got, summary = segment(model, inputs, tmp_path / "x.nii.gz", EXPORTED[0])
    assert summary["inference"]["runtime"] == "torch"
    assert any("differs from PyTorch" in note and "ran with PyTorch" in note for note in summary["notes"])
    assert np.array_equal(got, expected)
    assert exports(model) == []  # the rejected export is not kept


@pytest.mark.skipif(not EXPORTED, reason="neither OpenVINO nor ONNX Runtime is installed")
def test_a_failed_export_runs_in_pytorch_and_says_so(tmp_path, model, brats_inputs, monkeypatch):
    inputs, _ = brats_inputs

    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::example")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    _, summary = segment(model, inputs, tmp_path / "x.nii.gz", EXPORTED[0])
    assert summary["inference"]["runtime"] == "torch"
    assert any("failed (unsupported operator aten::example)" in note for note in summary["notes"])
    assert exports(model) == []  # nothing half-written beside the model


def test_a_read_only_model_folder_exports_into_the_user_home(tmp_path, home, monkeypatch):
    model = tmp_path / "m.pt"
    assert export_folder(model) == tmp_path / ".brainsegfounder" / "exports"
    monkeypatch.setattr(cpu_runtimes.os, "access", lambda path, mode: False)
    assert export_folder(model) == home / "exports"


@pytest.mark.parametrize(
    ("asked", "device", "openvino_installed", "expected"),
    [
        ("auto", CPU, True, "openvino"),
        ("auto", CPU, False, "torch"),
        ("auto", CUDA, True, "torch"),
        ("torch", CPU, True, "torch"),
        ("openvino", CPU, True, "openvino"),
    ],
)
def test_the_runtime_chosen(asked, device, openvino_installed, expected, monkeypatch):
    monkeypatch.setattr(cpu_runtimes, "installed", lambda runtime: openvino_installed)
    assert resolve_runtime(asked, device) == expected


@pytest.mark.parametrize(
    ("asked", "device", "message"),
    [
        ("openvino", CUDA, "runs on the CPU only; use --device cpu"),
        ("onnxruntime", CPU, "needs the Python packages onnxruntime onnx: pip install"),
        ("tensorrt", CPU, "runtime must be one of auto, torch, openvino, onnxruntime"),
    ],
)
def test_a_runtime_that_cannot_run_is_one_line(asked, device, message, monkeypatch):
    monkeypatch.setattr(cpu_runtimes, "installed", lambda runtime: False)
    with pytest.raises(UserError, match=message):
        resolve_runtime(asked, device)


@pytest.mark.skipif(not installed("openvino"), reason="OpenVINO is not installed")
def test_short_of_memory_the_run_stays_in_pytorch_and_says_so(tmp_path, model, brats_inputs, monkeypatch):
    from brainsegfounder import resources

    inputs, _ = brats_inputs
    monkeypatch.setattr(resources, "available_host_bytes", lambda: 64 * 2**20)  # a 64 MiB machine
    _, summary = segment(model, inputs, tmp_path / "x.nii.gz", "auto")
    assert summary["inference"]["runtime"] == "torch"
    assert any("the exported CPU runtime needs about" in note for note in summary["notes"])
    assert exports(model) == []  # nothing exported that will not run


@pytest.mark.skipif(not installed("openvino"), reason="OpenVINO is not installed")
def test_the_precision_reported_is_the_one_openvino_ran(tmp_path, model, brats_inputs):

    inputs, _ = brats_inputs
    _, summary = segment(model, inputs, tmp_path / "x.nii.gz", "openvino", precision="bf16")
    assert summary["inference"]["runtime"] == "openvino"
    assert summary["inference"]["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_a_site_sets_what_auto_means_on_the_cpu_only(monkeypatch):
    monkeypatch.setenv(cpu_runtimes.SITE_DEFAULT_VARIABLE, "torch")
    assert resolve_runtime("auto", CPU) == "torch"
    assert resolve_runtime("openvino", CPU) == "openvino" or not installed("openvino")  # asked by name: as asked
    monkeypatch.setenv(cpu_runtimes.SITE_DEFAULT_VARIABLE, "onnxruntime")
    assert resolve_runtime("auto", CUDA) == "torch"  # a GPU runs PyTorch whatever the CPU default
    if installed("onnxruntime"):
        assert resolve_runtime("auto", CPU) == "onnxruntime"
    monkeypatch.setenv(cpu_runtimes.SITE_DEFAULT_VARIABLE, "tensorrt")
    with pytest.raises(UserError, match=r"BRAINSEGFOUNDER_CPU_RUNTIME='tensorrt'; set it to one of torch, openvino"):
        resolve_runtime("auto", CPU)
