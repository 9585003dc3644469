"""Checkpoint files that are not checkpoints, names that cannot be file names, models by name,
and a command whose reader goes away."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

from brainsegfounder import registry
from brainsegfounder.cases import save_case
from brainsegfounder.checkpoints import read_checkpoint_file
from brainsegfounder.errors import UserError
from brainsegfounder.names import plain_name
from brainsegfounder.registry import free_name, register_model, resolve_model

from helpers import ROOT, measured, run_cli, zip_bomb

ENGINE = str(ROOT / "BrainSegFounderSlicer")


def test_random_bytes_are_not_a_checkpoint_not_a_pickle_risk(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match=r"is not a PyTorch checkpoint \(it starts with neither a zip") as error:
        read_checkpoint_file(path)
    assert "arbitrary code" not in str(error.value)


def test_a_pickle_that_torch_did_not_write_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(UserError, match=r"is a Python pickle, not a PyTorch checkpoint"):
        read_checkpoint_file(path)


def test_a_whole_pickled_model_is_still_refused_as_unsafe(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UserError, match=r"holds pickled Python objects .* could run arbitrary code"):
        read_checkpoint_file(path)


@pytest.mark.parametrize("protocol", [2, 3])
def test_legacy_format_checkpoints_still_load(tmp_path, protocol):
    """Protocol 3 puts other bytes first than torch's default 2: it was refused by its header."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert torch.equal(read_checkpoint_file(path)["w"], torch.ones(2))


@pytest.mark.parametrize("protocol", [0, 4, 5])
def test_legacy_checkpoints_the_safe_loader_cannot_read_say_so(tmp_path, protocol):
    """torch's weights_only unpickler stops at their first opcode ("Unsupported operand")."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with pytest.raises(UserError, match=rf"old format with pickle protocol {protocol}, which the safe loader"):
        read_checkpoint_file(path)


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


def _claiming_pickle(numel: int, legacy: bool) -> bytes:
    """torch's pickle of {"state_dict": {"w": tensor}} whose storage claims ``numel`` floats."""
    storage = object()

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel) + ((None,) if legacy else ())
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"state_dict": {"w": Tensor()}})
    return buffer.getvalue()


def claims_storage(path, gib: int, legacy: bool):
    """A checkpoint of a few kB whose records claim a ``gib`` GiB tensor: the reader must not
    trust the claim (the zip member is 4 kB; the legacy stream ends after 4 kB of data)."""
    numel = gib * 2**30 // 4
    if legacy:
        with path.open("wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(_claiming_pickle(numel, legacy=True))
            pickle.dump(["0"], f, protocol=2)
            f.write(struct.pack("<q", numel) + bytes(4096))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", _claiming_pickle(numel, legacy=False))
            archive.writestr("archive/byteorder", "little")
            archive.writestr("archive/data/0", bytes(4096))
            archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.slow
def test_checkpoints_torch_must_read_to_refuse_cost_no_more_than_importing_it(tmp_path):
    """What only torch's unpickler can refuse (a whole saved model, records claiming 8 GiB)
    costs what importing the engine and torch costs (312 MiB, 1.8 s measured; SimpleITK about
    100 MiB of it), plus a few MiB: the claims are never allocated."""
    env = {**os.environ, "PYTHONPATH": ENGINE, "BRAINSEGFOUNDER_HOME": str(tmp_path / "home")}
    baseline = measured([sys.executable, "-c", "import brainsegfounder.cli, torch"], env, tmp_path)
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    files = [whole, claims_storage(tmp_path / "zip.pt", 8, False), claims_storage(tmp_path / "old.pt", 8, True)]
    for path in files:
        run = measured([sys.executable, "-m", "brainsegfounder", "models", "inspect", path], env, tmp_path)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: "), run.stderr
        assert run.peak_mib < baseline.peak_mib + 50, (path.name, run.peak_mib, baseline.peak_mib)
        assert run.seconds < baseline.seconds + 3, (path.name, run.seconds, baseline.seconds)


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
    """Before: segment --model brats-synthetic-demo said 'unknown model' and models list showed
    no model although one ships."""
    assert resolve_model("brats-synthetic-demo") == ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt"
    with pytest.raises(UserError, match=r"in the registry but not on this computer"):
        resolve_model("brainsegfounder-brats")
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    shipped = ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt"
    assert re.search(rf"brats-synthetic-demo +brats +shipped +{re.escape(str(shipped))}", out), out
    assert re.search(r"brainsegfounder-brats +brats +not downloaded +not on this computer", out), out


def test_downloaded_and_local_models_by_name_and_listed(capsys, home):
    """A registry model's file in the download cache is used by its id; local models are listed
    with the task their description names; a local model a registry id hides says so."""
    real = home / "real.pt"
    home.mkdir()
    torch.save({"w": torch.zeros(2)}, real)
    (home / "downloads").mkdir()
    downloaded = home / "downloads" / "model_weights_BRATS-finetune.pt"
    downloaded.write_bytes(real.read_bytes())
    (home / "models").mkdir()
    (home / "models" / "glioma-v1.pt").write_bytes(real.read_bytes())
    (home / "models" / "glioma-v1.json").write_text(json.dumps({"task": "brats"}))
    (home / "models" / "brainsegfounder-atlas.pt").write_bytes(real.read_bytes())
    assert resolve_model("brainsegfounder-brats") == downloaded
    assert resolve_model("glioma-v1") == home / "models" / "glioma-v1.pt"
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    assert re.search(rf"brainsegfounder-brats +brats +downloaded +{re.escape(str(downloaded))}", out), out
    assert re.search(r"glioma-v1 +brats +local +\S+glioma-v1.pt\n", out), out
    assert re.search(r"brainsegfounder-atlas +\? +local .*a registry model has its name", out), out


def test_a_new_local_model_never_takes_a_registry_models_name(home, brats_model):
    """--model NAME finds the registry's model first: a local one of that name could not be used."""
    assert free_name("brats-synthetic-demo") == "brats-synthetic-demo-2"
    assert register_model(brats_model, "brats-synthetic-demo").name == "brats-synthetic-demo-2.pt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"file": "../../.bashrc"}, r"model file name '../../.bashrc' is not usable"),
        ({"id": "CON"}, r"model id 'CON' is not usable as a folder name: Windows reserves it"),
        ({"id": "demo\n"}, r"model id 'demo\\n' is not usable"),
        ({"bundled": "../outside.pt"}, r"bundled must be a path inside Resources"),
    ],
)
def test_the_engine_checks_registry_names_as_the_panel_does(tmp_path, monkeypatch, change, message):
    data = json.loads(registry.REGISTRY_FILE.read_text())
    data["models"][0].update(change)
    (tmp_path / "models.json").write_text(json.dumps(data))
    monkeypatch.setattr(registry, "REGISTRY_FILE", tmp_path / "models.json")
    with pytest.raises(UserError, match=message):
        registry.registry_models()


@pytest.mark.parametrize("name", ["CON", "nul.txt", "model\n"])
def test_names_users_give_are_checked_where_they_become_files(home, brats_model, tmp_path, name):
    with pytest.raises(UserError, match=r"not usable as a folder name"):
        register_model(brats_model, name)
    with pytest.raises(UserError, match=r"case id .* not usable as a folder name"):
        save_case(tmp_path / "cases", name, {}, None, "brats_regions")


PIPE_PLUGIN = """
import os


def register(subparsers, add_common):
    add_common(subparsers.add_parser("lose-a-worker"))
    return {"lose-a-worker": lose_a_worker}


def lose_a_worker(args, report, cancel):
    reader, writer = os.pipe()
    os.close(reader)  # as a crashed data loader worker leaves its queue
    os.write(writer, b"batch")
"""


def run_with_closed_stdout(command, tmp_path, close=True):
    """Run the CLI with stdout a real pipe whose reader closes at once (as ``| true`` does)."""
    (tmp_path / "pipe_plugin.py").write_text(PIPE_PLUGIN)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ENGINE, str(tmp_path)]),
        "BRAINSEGFOUNDER_COMMANDS": "pipe_plugin:register",
        "BRAINSEGFOUNDER_HOME": str(tmp_path / "home"),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "brainsegfounder", *map(str, command)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        if close:
            process.stdout.close()
        stderr = process.stderr.read()
        return process.wait(timeout=120), stderr


@pytest.mark.parametrize("command", [["devices"], ["models", "list"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(command, tmp_path):
    """Before: devices ended with a BrokenPipeError traceback, models list with 'internal error'.
    141 is what a shell reports for a tool ended by SIGPIPE (128 + 13), as `yes | true` does:
    the output was not all delivered, and `set -o pipefail` scripts see the usual code."""
    code, stderr = run_with_closed_stdout(command, tmp_path)
    assert stderr == ""
    assert code == 141


def test_an_error_still_reaches_stderr_when_the_json_reader_is_gone(tmp_path):
    random = tmp_path / "random.pt"
    random.write_bytes(os.urandom(4096))
    code, stderr = run_with_closed_stdout(["models", "inspect", random, "--progress", "json"], tmp_path)
    assert code == 2
    assert stderr.startswith("error: checkpoint"), stderr
    assert "not a PyTorch checkpoint" in stderr


def test_a_broken_pipe_that_is_not_stdout_is_an_error(tmp_path):
    """A worker's pipe breaking while stdout's reader is still there is a failure to report."""
    code, stderr = run_with_closed_stdout(["lose-a-worker"], tmp_path, close=False)
    assert code == 1
    assert stderr.startswith("error: internal error: BrokenPipeError"), stderr
    assert "Traceback" not in stderr


def test_models_inspect_takes_a_model_name(capsys, home):
    code, out, err = run_cli(["models", "inspect", "brats-synthetic-demo"], capsys)
    assert code == 0, err
    assert '"trained_on": "synthetic"' in out
