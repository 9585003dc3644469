"""Shared fixtures: small synthetic cases on real anatomy and tiny models, made once per run."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))  # the engine, also without pip install -e
sys.path.insert(0, str(ROOT / "Training"))  # the training pipeline, likewise
sys.path.insert(0, str(ROOT / "Web"))  # the web app, likewise

# The suite's models run in PyTorch: "auto" would export and compile each new model file for OpenVINO
# (a minute or more per file on 2 cores). test_cpu_runtimes.py tests the default, with this unset.
os.environ["BRAINSEGFOUNDER_CPU_RUNTIME"] = "torch"

# Under pytest-xdist (pyproject's addopts: two workers, a file per worker at a time) the workers
# share the cores: each one's PyTorch, and the processes it starts, take one thread. Two threads
# each would oversubscribe the cores, which slows PyTorch's OpenMP loops threefold or more.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

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


def balanced_model(path, task, seed, inputs, architecture="SwinUNETR"):
    """A random tiny model (of ``architecture``) whose output bias is set so about half the brain
    is labelled on ``inputs``: random weights alone may label nothing, which would let label tests
    pass vacuously."""
    import torch

    from brainsegfounder.checkpoints import init_model, load_checkpoint, network_from_checkpoint, save_checkpoint
    from brainsegfounder.imageio import read_volume
    from brainsegfounder.networks import output_bias
    from brainsegfounder.preprocess import BrainBox, normalize
    from brainsegfounder.segment import to_network_array

    init_model(path, "tiny", task, seed=seed, roi=TEST_ROI, architecture=architecture)
    ckpt = load_checkpoint(path)
    model = network_from_checkpoint(ckpt).eval()
    volume = to_network_array([read_volume(p) for _, p in inputs], ckpt.meta.orientation)
    box = BrainBox.of(volume)
    x = normalize(box.crop(volume))[(slice(None), *tuple(slice(0, 64) for _ in range(3)))]
    pad = [(0, 0)] + [(0, 64 - n) for n in x.shape[1:]]
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.pad(x, pad))[None])[0]
        median = logits.flatten(1).median(dim=1).values
        output_bias(model, ckpt.network).sub_(median)
    return save_checkpoint(path, model, ckpt.meta)


@pytest.fixture(scope="session")
def brats_model(tmp_path_factory, brats_inputs):
    return balanced_model(tmp_path_factory.mktemp("model") / "tiny-brats.pt", "brats", 3, brats_inputs[0])


@pytest.fixture(scope="session")
def atlas_model(tmp_path_factory):
    from brainsegfounder.checkpoints import init_model

    return init_model(tmp_path_factory.mktemp("model") / "tiny-atlas.pt", "tiny", "atlas", seed=4, roi=TEST_ROI)


@pytest.fixture(scope="session")
def train_root(tmp_path_factory):
    """Four synthetic BraTS 2021 cases at 3 mm in two folds."""
    from brainsegfounder.synth.cohort import write_cohort

    return write_cohort(tmp_path_factory.mktemp("train"), kind="brats", n=4, seed=21, spacing=3.0, folds=2)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private local model registry."""
    monkeypatch.setenv("BRAINSEGFOUNDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def healthy_root(tmp_path_factory):
    """Six synthetic healthy subjects (T1 + FLAIR) at 3 mm in the UK Biobank-style layout."""
    from brainsegfounder.synth.cohort import write_cohort

    return write_cohort(tmp_path_factory.mktemp("healthy"), kind="healthy", n=6, seed=5, spacing=3.0)
