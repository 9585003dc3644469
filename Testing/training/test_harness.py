"""The run harness: portable peak memory, one precision decision, one state reader."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from brainsegfounder.errors import UserError
from brainsegfounder_training.harness import host
from brainsegfounder_training.harness.optimisation import Optimisation
from brainsegfounder_training.harness.state import load_state, save_state

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"lr": 1e-3, "weight_decay": 0.0, "amp": True}


def _vm_hwm_gib() -> float:
    """Linux's own record of this process's peak resident memory (kB in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    pytest.skip("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with Linux's /proc record")
def test_peak_host_memory_is_in_gib_as_the_kernel_counts_it():
    block = bytearray(300 * 2**20)  # raise the peak by 300 MiB, touched
    block[::4096] = b"x" * len(block[::4096])
    assert host.peak_host_memory_gib() == pytest.approx(_vm_hwm_gib(), rel=0.02)
    assert host.peak_host_memory_gib() > 0.29
    del block


def test_peak_memory_is_left_out_where_the_os_has_no_measure(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert host.peak_host_memory_gib() is None
    assert host.peak_memory_gib(torch.device("cpu")) == {}


def test_the_training_commands_import_without_the_resource_module():
    """Windows has no ``resource``: "Start fine-tuning" must not fail at import."""
    code = (
        "import sys; sys.modules['resource'] = None\n"
        "import brainsegfounder_training.finetuning.trainer, brainsegfounder_training.pretraining.loop\n"
        "from brainsegfounder_training.harness.host import peak_memory_gib\n"
        "import torch; print(sorted(peak_memory_gib(torch.device('cpu'))))"
    )
    env = {"PYTHONPATH": f"{ROOT / 'BrainSegFounderSlicer'}:{ROOT / 'Training'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("[]", "['host_peak_rss_gib']")


@pytest.mark.parametrize(
    ("device", "amp", "bf16", "expected"),
    [
        ("cpu", True, True, "fp32"),  # mixed precision is for CUDA only
        ("cuda", False, True, "fp32"),  # turned off in the recipe
        ("cuda", True, True, "bf16"),
        ("cuda", True, False, "fp16"),  # a GPU without bf16: fp16 with loss scaling
    ],
)
def test_one_precision_decision_for_training_and_validation(monkeypatch, device, amp, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    model = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():  # a CPU-only torch warns that the fp16 loss scaler has no CUDA
        warnings.simplefilter("ignore")
        opt = Optimisation(model, {**TRAIN, "amp": amp}, torch.device(device), warmup=1, total=2)
    assert opt.precision == expected
    if device == "cpu":
        with opt.autocast():
            assert model(torch.ones(1, 2)).dtype == torch.float32


def test_a_state_of_the_other_kind_of_run_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    save_state({"format": "brainsegfounder-pretrain-state", "step": 3}, path, "nothing was kept.")
    assert load_state(path, "brainsegfounder-pretrain-state", "pretrain")["step"] == 3
    with pytest.raises(UserError, match="not a training state written by brainsegfounder finetune"):
        load_state(path, "brainsegfounder-train-state", "finetune")


@pytest.mark.parametrize(("platform", "expected_gib"), [("linux", 1024.0), ("darwin", 1.0)])
def test_peak_memory_reads_getrusage_in_the_unit_of_the_platform(monkeypatch, platform, expected_gib):
    """ru_maxrss is KiB on Linux and bytes on macOS: the same number means 1024x more on Linux."""

    class Usage:
        ru_maxrss = 2**30

    class Resource:
        RUSAGE_SELF = 0

        @staticmethod
        def getrusage(_who):
            return Usage

    monkeypatch.setitem(sys.modules, "resource", Resource)
    monkeypatch.setattr(host.sys, "platform", platform)
    assert host.peak_host_memory_gib() == expected_gib


def test_mixed_precision_is_decided_in_one_place():
    """Training steps and validation (fine-tuning and pretraining, through its pretext tasks) enter
    ``Optimisation.autocast``; no other module of the training package opens an autocast of its own."""
    package = ROOT / "Training" / "brainsegfounder_training"
    offenders = [p.name for p in package.rglob("*.py") if "torch.autocast(" in p.read_text()]
    assert offenders == ["optimisation.py"]
    assert (package / "finetuning" / "trainer.py").read_text().count("opt.autocast()") >= 1
    # pretraining hands Optimisation.autocast to each pretext task, for its step and its validation
    assert (package / "pretraining" / "loop.py").read_text().count("run.opt.autocast") >= 2
    assert "autocast" in (package / "pretraining" / "tasks.py").read_text()


def test_the_engine_builds_its_commands_without_the_training_extras():
    """The engine imports the training commands to build its parser for every command (Slicer sets
    BRAINSEGFOUNDER_COMMANDS always); inference must work where PyYAML, the training extra, is absent."""
    code = (
        "import sys; sys.modules['yaml'] = None\n"
        "from brainsegfounder.cli import build_parser\n"
        "parser = build_parser()\n"
        "print(parser.parse_args(['finetune', '--data', 'd', '--out', 'o']).command)\n"
    )
    env = {
        "PYTHONPATH": f"{ROOT / 'BrainSegFounderSlicer'}:{ROOT / 'Training'}",
        "PATH": "/usr/bin:/bin",
        "BRAINSEGFOUNDER_COMMANDS": "brainsegfounder_training.commands:register",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finetune"
