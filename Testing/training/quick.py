"""Quick training recipes and runners for the training tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers import FINETUNE_QUICK, ROOT, wait_until

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training")])}

# A run of one 64^3 step per epoch with the tiny model: seconds on a 2-core CPU.
QUICK = FINETUNE_QUICK


# What every command a test runs adds: no progress output, the CPU.
CPU = ["--progress", "none", "--device", "cpu"]


def quick_recipe(data, *overrides, config="brats"):
    from brainsegfounder_training.finetuning.recipe import load_recipe

    return load_recipe(config, [f"data.path={data}", *QUICK, *overrides])


def run_trainer(recipe, out, resume=False):
    from brainsegfounder_training.finetuning.trainer import Trainer
    from brainsegfounder_training.harness.run_folder import RunFolder

    return Trainer(recipe, RunFolder(out), resume, "cpu").fit()


def cli(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs):
    """``brainsegfounder ARGS`` in a child process (stdout and stderr piped unless told otherwise)."""
    return subprocess.Popen(
        [sys.executable, "-m", "brainsegfounder", *map(str, args)],
        env=ENV,
        stdout=stdout,
        stderr=stderr,
        text=True,
        **kwargs,
    )


def torchrun_cpu(args, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m brainsegfounder ARGS`` on the CPU (gloo), one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, "-m", "brainsegfounder", *map(str, args), *CPU],
        env={**ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_after_first_state(args, out: Path) -> Path:
    """Start ``brainsegfounder ARGS --out OUT``, SIGKILL it as soon as OUT/state.pt exists (mid-run),
    and return that state's path. Its output goes to a file, not a pipe nobody reads while it runs
    (a full pipe would block the run before it saves)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        killed = cli([*args, "--out", out], stdout=subprocess.DEVNULL, stderr=log)
        state = Path(out) / "state.pt"
        wait_until(
            lambda: state.exists() or killed.poll() is not None, 300, f"{state} to be written", on_timeout=killed.kill
        )
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        log.seek(0)
        assert killed.returncode == -signal.SIGKILL, log.read()[-2000:]
    return state
