"""Shared fixtures: small synthetic cases on real anatomy and tiny models, made once per run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))  # the engine, also without pip install -e

TEST_SPACING = 3.0  # mm: BraTS grid 80 x 80 x 52, a second or two per tiny-model case
TEST_ROI = (64, 64, 64)


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory):
    from brainsegfounder.synth.cohort import write_cohort

    return write_cohort(tmp_path_factory.mktemp("brats"), kind="brats", n=2, seed=11, spacing=TEST_SPACING, folds=2)


@pytest.fixture(scope="session")
def brats_inputs(brats_root):
    """[(modality, path)] of the first synthetic BraTS 2021 case, and its label path."""
    from brainsegfounder.synth.cohort import case_files

    _, images, label = case_files("brats2021", 0)
    return [(m, str(brats_root / p)) for m, p in images.items()], brats_root / label


@pytest.fixture(scope="session")
def brats_model(tmp_path_factory):
    from brainsegfounder.cli import init_model

    return init_model(tmp_path_factory.mktemp("model") / "tiny-brats.pt", "tiny", "brats", seed=3, roi=TEST_ROI)


@pytest.fixture(scope="session")
def atlas_model(tmp_path_factory):
    from brainsegfounder.cli import init_model

    return init_model(tmp_path_factory.mktemp("model") / "tiny-atlas.pt", "tiny", "atlas", seed=4, roi=TEST_ROI)


def run_cli(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from brainsegfounder.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def segment_args(model, inputs, output, *extra):
    args = ["segment", "--model", model, "--output", output, "--progress", "none", *extra]
    for name, path in inputs:
        args += ["--input", f"{name}={path}"]
    return args
