"""Checkpoint files that are not checkpoints, names that cannot be file names, models by name,
and a command whose reader goes away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from brainsegfounder.checkpoints import read_checkpoint_file
from brainsegfounder.errors import UserError
from brainsegfounder.names import plain_name
from brainsegfounder.registry import resolve_model

from helpers import ROOT, measured, run_cli, zip_bomb

ENGINE = str(ROOT / "BrainSegFounderSlicer")


def test_random_bytes_are_not_a_checkpoint_not_a_pickle_risk(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match=r"is not a PyTorch checkpoint \(no zip or pickle header\)") as error:
        read_checkpoint_file(path)
    assert "arbitrary code" not in str(error.value)


def test_a_whole_pickled_model_is_still_refused_as_unsafe(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UserError, match=r"holds pickled Python objects .* could run arbitrary code"):
        read_checkpoint_file(path)


def test_legacy_format_checkpoints_still_load(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint_file(path)["w"], torch.ones(2))


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path):
    with pytest.raises(UserError, match=r"would inflate to \d+"):
        read_checkpoint_file(zip_bomb(tmp_path / "bomb.pt"))


@pytest.mark.slow
def test_a_rejected_checkpoint_costs_little(tmp_path, brats_inputs):
    """Before: a 2.3 MB deflated checkpoint took 7 s and 2520 MiB to refuse (this one, 300 MiB
    inflated, about 550 MiB); now it is refused from its zip directory."""
    bomb = zip_bomb(tmp_path / "bomb.pt")
    env = {**os.environ, "PYTHONPATH": ENGINE, "BRAINSEGFOUNDER_HOME": str(tmp_path / "home")}
    run = measured([sys.executable, "-m", "brainsegfounder", "models", "inspect", bomb], env, tmp_path)
    assert run.returncode == 2, run.stderr
    assert "would inflate" in run.stderr
    assert run.peak_mib < 300, run.peak_mib


@pytest.mark.parametrize(
    "name", ["CON", "con", "Aux.txt", "NUL", "com1", "LPT9.log", "model\n", "a/b", "..", ".hidden", "x" * 101, "end."]
)
def test_names_that_cannot_be_file_names(name):
    with pytest.raises(UserError, match=r"not usable as a folder name"):
        plain_name(name, "model name")


@pytest.mark.parametrize("name", ["patient-1", "BraTS2021_00001", "console", "COM10", "my.model.v2"])
def test_names_that_can(name):
    assert plain_name(name, "model name") == name


def test_shipped_model_by_name_and_listed(capsys, home):
    assert resolve_model("brats-synthetic-demo") == ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt"
    with pytest.raises(UserError, match=r"in the registry but not on this computer"):
        resolve_model("brainsegfounder-brats")
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    assert "brats-synthetic-demo" in out
    assert str(ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt") in out
    assert "not on this computer" in out


@pytest.mark.parametrize("command", [["devices"], ["models", "list"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(command):
    env = {**os.environ, "PYTHONPATH": ENGINE}
    with subprocess.Popen(
        [sys.executable, "-m", "brainsegfounder", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        process.stdout.close()  # as `| true` does
        stderr = process.stderr.read()
        code = process.wait(timeout=120)
    assert stderr == ""
    assert code == 141
