"""Model licences: every registry entry names one, `models list` shows it, and a model whose
licence needs acceptance is refused until it is accepted (once, remembered per model)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from brainsegfounder import licences
from brainsegfounder.errors import UserError
from brainsegfounder.registry import REGISTRY_FILE, check_entry, read_registry, register_model

from helpers import run_cli, segment_args

MTA = "brainsegfounder-brats"


@pytest.fixture
def downloaded_mta_model(home):
    """The BraTS weights' file where a download puts it (its content is not what is tested)."""
    (home / "downloads").mkdir(parents=True)
    path = home / "downloads" / "model_weights_BRATS-finetune.pt"
    torch.save({"w": torch.zeros(2)}, path)
    return path


def test_every_registry_entry_names_its_licence():
    entries = read_registry(REGISTRY_FILE)
    assert all(e["license"] for e in entries)
    assert {e["id"] for e in entries if e.get("license_needs_acceptance")} == {MTA, "brainsegfounder-atlas"}
    entry = dict(entries[0])
    del entry["license"]
    with pytest.raises(UserError, match="lacks 'license'"):
        check_entry(entry)


@pytest.mark.parametrize("by", ["name", "path"])
def test_a_model_under_the_mta_is_refused_until_its_licence_is_accepted(tmp_path, capsys, downloaded_mta_model, by):
    model = MTA if by == "name" else str(downloaded_mta_model)
    inputs = [(m, tmp_path / f"{m}.nii.gz") for m in ("flair", "t1ce", "t1", "t2")]  # never read
    args = segment_args(model, inputs, tmp_path / "o.nii.gz")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert re.search(rf"comes under the licence uk-biobank-mta .*models accept-licence {MTA}", lines[0]), err
    assert not (tmp_path / "o.nii.gz").exists()

    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    assert f"(accept before first use: models accept-licence {MTA})" in out

    code, out, err = run_cli(["models", "accept-licence", MTA, "--progress", "none"], capsys)
    assert code == 0, err
    assert f"accepted for {MTA}: uk-biobank-mta" in out
    code, _, err = run_cli(args, capsys)  # past the licence: now its inputs are looked at
    assert code == 2
    assert "licence" not in err
    assert "does not exist" in err
    code, out, _ = run_cli(["models", "list"], capsys)
    assert re.search(r"licence: uk-biobank-mta \S+ \(accepted\)", out), out
    assert "licence: Apache-2.0" in out  # the demo model's, which needs no acceptance


def test_acceptance_is_per_model_and_per_licence_text(home):
    licences.accept(MTA, "uk-biobank-mta (v1)")
    assert licences.is_accepted(MTA, "uk-biobank-mta (v1)")
    assert not licences.is_accepted(MTA, "uk-biobank-mta (v2)")  # changed terms: asked again
    assert not licences.is_accepted("brainsegfounder-atlas", "uk-biobank-mta (v1)")
    assert json.loads((home / "licences.json").read_text())[MTA]["license"] == "uk-biobank-mta (v1)"
    with pytest.raises(UserError, match="not a registry model"):
        licences.accept_registry_model("no-such-model")


def test_a_registered_model_carries_its_licence(capsys, home, atlas_model):
    register_model(atlas_model, "stroke-a", licence="CC-BY-NC-4.0")
    register_model(atlas_model, "stroke-b")
    described = json.loads((home / "models" / "stroke-a.json").read_text())
    assert described["license"] == "CC-BY-NC-4.0"
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    assert re.search(r"stroke-a .*\n +licence: CC-BY-NC-4.0\n", out), out
    assert re.search(r"stroke-b .*\n +licence: not stated", out), out


def test_fine_tuning_from_a_model_whose_licence_is_not_accepted_is_refused(tmp_path, capsys, downloaded_mta_model):
    pytest.importorskip("brainsegfounder_training")
    args = ["finetune", "--config", "brats", "--base", MTA, "--data", tmp_path, "--out", tmp_path / "run"]
    code, _, err = run_cli([*args, "--progress", "none"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert f"models accept-licence {MTA}" in lines[0], err
    assert not (tmp_path / "run").exists()
