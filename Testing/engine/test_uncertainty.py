"""The uncertainty map: the 8 mirror flips' variance, on the reference grid, as an error detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_roc_auc

from brainsegfounder.demo import DEMO_MODEL
from brainsegfounder.inference import InferenceSettings, predict_probabilities
from brainsegfounder.labels import schema
from brainsegfounder.uncertainty import UNCERTAIN_VARIANCE

from helpers import run_cli, segment_args, tumour_crop

SHAPE = (64, 64, 64)


class RampNet(torch.nn.Module):
    """Logits = first input channel, plus (when ``ramp``) a fixed ramp along the window's first
    axis: flipping that axis changes the answer, so the 8 flips disagree by a known amount."""

    def __init__(self, ramp: bool):
        super().__init__()
        self.ramp = torch.linspace(-3, 3, SHAPE[0]).view(1, 1, -1, 1, 1) if ramp else torch.zeros(1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return (x[:, :1] + self.ramp).repeat(1, 3, 1, 1, 1)


@pytest.mark.parametrize(("ramp", "flips"), [(False, 8), (True, 8), (True, 4)])
def test_flip_variance_is_exact_for_a_known_predictor(ramp, flips):
    volume = np.random.default_rng(2).standard_normal((1, *SHAPE)).astype(np.float32)
    settings = InferenceSettings(uncertainty=True, blend="constant", flips=flips)
    net = RampNet(ramp)
    probs, report = predict_probabilities(net, volume, SHAPE, settings, torch.device("cpu"))
    assert net.calls == flips
    line = np.linspace(-3, 3, SHAPE[0])[:, None, None] if ramp else 0.0
    # a share w of the flips mirrors the first axis (4 of 8; 1 of 4): probabilities b, the rest a
    w = 1 / 2 if flips == 8 else 1 / 4
    a = 1 / (1 + np.exp(-(volume[0] + line)))
    b = 1 / (1 + np.exp(-(volume[0] + (line[::-1] if ramp else 0.0))))
    assert np.allclose(probs[0], (1 - w) * a + w * b, atol=1e-5)
    assert np.allclose(report.variance[0], w * (1 - w) * (a - b) ** 2, atol=1e-5)
    assert report.variance.shape == probs.shape
    if not ramp:  # a flip-equivariant network is certain everywhere
        assert report.variance.max() < 1e-6


def test_plain_inference_reports_no_variance():
    volume = np.zeros((1, *SHAPE), np.float32)
    _, report = predict_probabilities(RampNet(True), volume, SHAPE, InferenceSettings(), torch.device("cpu"))
    assert report.variance is None


def test_uncertainty_output_must_be_an_image_file(tmp_path, capsys):
    inputs = [("flair", tmp_path / "never-read.nii.gz")]  # outputs are checked before any input
    args = segment_args(str(DEMO_MODEL), inputs, tmp_path / "o.nii.gz", "--uncertainty", tmp_path / "u.json")
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "--uncertainty" in err
    assert "must end in" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_uncertainty_map_lies_on_the_reference_grid_and_finds_the_errors(tmp_path, capsys, brats_root):
    """The demo model (trained at 2 mm) run at the case's 3 mm: harder than it was trained for,
    so it makes errors; the voxels it gets wrong must be the uncertain ones."""
    inputs, truth = tumour_crop(brats_root, tmp_path)  # the brain fits one window
    out, summary_path = tmp_path / "labels.nii.gz", tmp_path / "s.json"
    extra = ("--uncertainty", tmp_path / "u.nii.gz", "--summary", summary_path, "--spacing", "input")
    code, stdout, err = run_cli(segment_args(str(DEMO_MODEL), inputs, out, *extra), capsys)
    assert code == 0, err
    reference, labels = sitk.ReadImage(inputs[0][1]), sitk.ReadImage(str(out))
    uncertainty = sitk.ReadImage(str(tmp_path / "u.nii.gz"))
    assert uncertainty.GetSize() == reference.GetSize()
    assert np.allclose(uncertainty.GetOrigin(), reference.GetOrigin())
    assert np.allclose(uncertainty.GetSpacing(), reference.GetSpacing())
    assert np.allclose(uncertainty.GetDirection(), reference.GetDirection())
    assert uncertainty.GetPixelID() == sitk.sitkFloat32
    summary = json.loads(summary_path.read_text())
    assert summary["inference"]["windows"] == 1

    u = sitk.GetArrayFromImage(uncertainty)
    tissue = np.any([sitk.GetArrayFromImage(sitk.ReadImage(p)) != 0 for _, p in inputs], axis=0)
    assert u.min() >= 0
    assert u.max() <= 0.25
    assert not u[~tissue].any()
    brats = schema("brats_regions")
    predicted = brats.labels_to_regions(sitk.GetArrayFromImage(labels), "brats2021")
    true = brats.labels_to_regions(sitk.GetArrayFromImage(truth), "brats2021")
    wrong = np.any(predicted != true, axis=0)[tissue]
    assert 0.005 < wrong.mean() < 0.5, "the test needs a model that errs sometimes"
    auc = compute_roc_auc(torch.from_numpy(u[tissue]), torch.from_numpy(wrong.astype(np.float32)))
    print(f"error-detection AUC {auc:.3f} over {tissue.sum()} brain voxels, {wrong.sum()} wrong")
    assert auc > 0.75

    # each region's uncertain volume counts that region's variance: at most the map's
    voxel_ml = np.prod(reference.GetSpacing()) / 1000
    flagged_ml = np.count_nonzero(u >= UNCERTAIN_VARIANCE) * voxel_ml
    volumes = [r["uncertain_ml"] for r in summary["uncertainty"]["regions"].values()]
    assert list(summary["uncertainty"]["regions"]) == ["TC", "WT", "ET"]
    assert "8 mirror flips" in summary["uncertainty"]["measure"]
    assert max(volumes) <= flagged_ml + 1e-3 <= sum(volumes) + 2e-3
    assert flagged_ml > 0
    assert "uncertain (flip variance" in stdout
