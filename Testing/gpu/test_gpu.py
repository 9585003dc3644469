"""What only a CUDA GPU can show (``pytest -m gpu``; Testing/gpu/check.sh runs them).

Autocast bf16/fp16 against fp32 in the engine's sliding window, the fallback after a real CUDA
out-of-memory error, DDP over NCCL, and a fine-tuning and a pretraining step with AMP.

Where PyTorch sees no CUDA GPU the module is skipped before any fixture is made (so the
suite pays nothing for it), except under ``BSF_GPU_TESTS_ON_CPU=1`` (``check.sh --dry-run``):
then the tests that mean something on a CPU run there, the same code at the same sizes, so a
mistake in this file shows before a GPU's time is spent finding it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from helpers import ROOT

CUDA = torch.cuda.is_available()
ON_CPU = os.environ.get("BSF_GPU_TESTS_ON_CPU") == "1"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (CUDA or ON_CPU), reason="no CUDA GPU (BSF_GPU_TESTS_ON_CPU=1 runs them on the CPU)"),
]

DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")  # an index: set_per_process_memory_fraction needs one
DEMO = ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt"  # a trained tiny model: decisive outputs
SAMPLE = ROOT / "Resources" / "SampleData"
SAMPLE_INPUTS = (("flair", "t2f"), ("t1ce", "t1c"), ("t1", "t1n"), ("t2", "t2w"))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training")])}

# The training tests' quick recipes (helpers.py): tiny model, 64^3, one step.
FINETUNE_QUICK = [*helpers.FINETUNE_QUICK, "data.max_val_cases=1"]
PRETRAIN_QUICK = [*helpers.PRETRAIN_QUICK, "train.steps=1", "train.val_every=1", "train.save_every=1"]


def needs_cuda(what: str):
    if not CUDA:
        pytest.skip(f"{what} needs a CUDA GPU")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def sample_volume():
    """The Sample Data case (2 mm) as the demo model's network sees it, before its brain crop."""
    from brainsegfounder.checkpoints import load_checkpoint, resolve_meta
    from brainsegfounder.imageio import read_volume
    from brainsegfounder.segment import to_network_array

    meta = resolve_meta(load_checkpoint(DEMO), "brats")
    volume = to_network_array(
        [read_volume(str(SAMPLE / f"BrainSegFounderGlioma-{t}.nii.gz")) for _, t in SAMPLE_INPUTS], meta.orientation
    )
    if CUDA:
        return volume
    # On a CPU one window's worth (64^3 around the tumour): seconds instead of a minute per precision.
    truth = to_network_array([read_volume(str(SAMPLE / "BrainSegFounderGlioma-seg.nii.gz"))], meta.orientation)[0]
    centre = np.argwhere(truth > 0).mean(axis=0).astype(int)
    start = [int(np.clip(c - 32, 0, n - 64)) for c, n in zip(centre, truth.shape, strict=True)]
    return volume[(slice(None), *(slice(a, a + 64) for a in start))]


def probabilities(volume, precision: str, **settings):
    from brainsegfounder.inference import InferenceSettings
    from brainsegfounder.segment import Segmenter

    segmenter = Segmenter(
        str(DEMO), task="brats", device=str(DEVICE), settings=InferenceSettings(precision=precision, **settings)
    )
    probs, _box, report = segmenter.probabilities(volume)
    return probs, report


@pytest.fixture(scope="module")
def fp32_probabilities(sample_volume):
    return probabilities(sample_volume, "fp32")[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_agrees_with_fp32_in_the_sliding_window(sample_volume, fp32_probabilities, precision):
    """The trained demo model on the Sample Data case: each region's thresholded map under
    autocast has Dice >= 0.99 against fp32's, and the probabilities stay close."""
    if precision == "fp16" and not CUDA:
        pytest.skip("fp16 autocast is a GPU path")
    probs, report = probabilities(sample_volume, precision)
    assert report.precision == precision
    assert report.device.startswith(DEVICE.type)
    difference = np.abs(probs - fp32_probabilities)
    regions = [dice(probs[c] > 0.5, fp32_probabilities[c] > 0.5) for c in range(probs.shape[0])]
    facts = f"{precision}: Dice per region {regions}, mean |dp| {difference.mean():.2e}, max {difference.max():.3f}"
    print(facts)
    assert min(regions) >= 0.99, facts
    assert difference.mean() < 5e-3, facts
    assert np.quantile(difference, 0.9999) < 0.1, facts


def test_a_real_out_of_memory_error_falls_back_and_says_so(sample_volume, fp32_probabilities):
    """The GPU's memory capped (torch.cuda.set_per_process_memory_fraction) below what one window
    needs: a real torch.OutOfMemoryError, then the fallback plan (one window per batch, then the
    CPU) brings the probabilities back, with notes that say so. Memory mode "normal", so the
    memory plan cannot dodge the error by choosing the low-memory mode itself."""
    needs_cuda("a real CUDA out-of-memory error")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(DEVICE).total_memory
    cap = torch.cuda.memory_reserved(DEVICE) + 48 * 2**20  # the tiny model and the input fit; no 64^3 window does
    torch.cuda.set_per_process_memory_fraction(cap / total, DEVICE)
    try:
        with pytest.raises(torch.OutOfMemoryError):  # the cap is real: a window's worth of memory is refused
            torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)
        probs, report = probabilities(sample_volume, "fp32", memory="normal", sw_batch_size=2)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, DEVICE)
        torch.cuda.empty_cache()
    print(report.notes)
    assert report.device == "cpu", report
    assert any("out of memory on cuda" in note for note in report.notes), report.notes
    regions = [dice(probs[c] > 0.5, fp32_probabilities[c] > 0.5) for c in range(probs.shape[0])]
    assert min(regions) >= 0.99, regions


def spy_on_precision(monkeypatch) -> list:
    """The precision each training step and validation ran under (Optimisation.autocast's)."""
    from brainsegfounder_training.harness.optimisation import Optimisation

    seen, autocast = [], Optimisation.autocast

    def spy(self):
        seen.append(self.precision)
        return autocast(self)

    monkeypatch.setattr(Optimisation, "autocast", spy)
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_fine_tuning_step_with_amp(tmp_path, train_root, monkeypatch, precision):
    """One step and one validation of the BraTS recipe (tiny, 64^3) on the GPU under AMP: bf16,
    and fp16 with loss scaling as on a GPU without bf16 (forced by hiding bf16)."""
    from brainsegfounder_training.finetuning.recipe import load_recipe
    from brainsegfounder_training.finetuning.trainer import Trainer
    from brainsegfounder_training.harness.run_folder import RunFolder

    needs_cuda("the fine-tuning step under AMP (on a CPU the DDP test runs the same step in fp32)")
    if precision == "fp16":
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    seen = spy_on_precision(monkeypatch)
    recipe = load_recipe("brats", [f"data.path={train_root}", *FINETUNE_QUICK])
    summary = Trainer(recipe, RunFolder(tmp_path / "run"), False, str(DEVICE)).fit()
    assert summary["steps"] == 1
    assert summary["device"].startswith(DEVICE.type)
    assert set(seen) == {precision}, seen
    assert np.isfinite(summary["best"]["mean_dice"])
    assert (tmp_path / "run" / "best.pt").is_file()


def test_one_pretraining_step_with_amp(tmp_path, healthy_root, monkeypatch):
    """One stage-1 step (rotation, contrastive, inpainting) and its validation under AMP (bf16)."""
    needs_cuda("the pretraining step under AMP (on a CPU, fp32, it is test_pretraining.py's)")
    from brainsegfounder_training.harness.run_folder import RunFolder
    from brainsegfounder_training.pretraining.loop import Pretrainer
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    seen = spy_on_precision(monkeypatch)
    recipe = load_pretrain_recipe("stage1-ukb", [f"data.path={healthy_root}", *PRETRAIN_QUICK])
    summary = Pretrainer(recipe, RunFolder(tmp_path / "run"), False, str(DEVICE)).fit()
    assert summary["steps"] == 1
    assert summary["device"].startswith(DEVICE.type)
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert set(seen) == {expected}, seen
    assert np.isfinite(summary["best"]["val_reconstruction"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_ddp_over_nccl_in_a_world_of_one(tmp_path, request, kind):
    """A one-process DDP world as torchrun starts it, on the GPU over NCCL (gloo on the CPU):
    the run's model is wrapped in DistributedDataParallel and every collective of the harness
    (the sampler, gathers, barriers, the stop flag; pretraining's gathered negatives) goes
    through the backend. See ddp_worker.py for why a world of one must be forced."""
    if kind == "pretrain" and not CUDA:
        pytest.skip("on a CPU the fine-tuning run is DDP's check (pretraining's costs a minute more)")
    data = request.getfixturevalue("train_root" if kind == "finetune" else "healthy_root")
    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(free_port())
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker), kind, str(data), str(tmp_path / "run"), DEVICE.type]
        + (FINETUNE_QUICK if kind == "finetune" else PRETRAIN_QUICK),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["wrapped"] == "DistributedDataParallel", facts
    assert facts["backend"] == ("nccl" if CUDA else "gloo"), facts
    assert facts["steps"] == 1, facts
    assert facts["device"].startswith(DEVICE.type), facts
