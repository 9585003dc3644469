"""Sliding window bookkeeping, cancellation, the out-of-memory fallback, label conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainsegfounder.errors import Cancelled
from brainsegfounder.inference import InferenceSettings, count_windows, fallback_plan, predict_probabilities
from brainsegfounder.labels import schema
from brainsegfounder.preprocess import BrainBox
from brainsegfounder.progress import CancelToken


class CountingNet(torch.nn.Module):
    """Logit = first input channel; counts calls and window sizes."""

    def __init__(self, fail_if_batch_over=None):
        super().__init__()
        self.calls, self.batch_sizes = 0, []
        self.fail_if_batch_over = fail_if_batch_over

    def forward(self, x):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        if self.fail_if_batch_over and x.shape[0] > self.fail_if_batch_over:
            raise torch.OutOfMemoryError("simulated")
        return x[:, :1].repeat(1, 3, 1, 1, 1)


@pytest.mark.parametrize(("shape", "overlap"), [((70, 90, 64), 0.5), ((130, 64, 200), 0.6), ((40, 40, 40), 0.5)])
def test_window_count_matches_monai(shape, overlap):
    net = CountingNet()
    settings = InferenceSettings(overlap=overlap, sw_batch_size=1)
    volume = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    probs, report = predict_probabilities(net, volume, (64, 64, 64), settings, torch.device("cpu"))
    assert net.calls == report.windows == count_windows(shape, (64, 64, 64), overlap)
    # identity logits, gaussian blending of identical values: sigmoid of the input back
    assert np.allclose(probs[0], 1 / (1 + np.exp(-volume[0])), atol=1e-4)


def test_cancel_between_windows():
    net = CountingNet()
    cancel = CancelToken()
    seen = []

    def progress(stage, done, total, message=""):
        seen.append(done)
        if done == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        predict_probabilities(
            net,
            np.ones((1, 128, 128, 128), np.float32),
            (64, 64, 64),
            InferenceSettings(sw_batch_size=1),
            torch.device("cpu"),
            progress,
            cancel,
        )
    assert net.calls == 2
    assert max(seen) == 2


def test_out_of_memory_retries_with_smaller_batches_and_says_so():
    net = CountingNet(fail_if_batch_over=1)
    messages = []
    probs, report = predict_probabilities(
        net,
        np.ones((1, 128, 64, 64), np.float32),
        (64, 64, 64),
        InferenceSettings(sw_batch_size=4),
        torch.device("cpu"),
        lambda s, d, t, m="": messages.append(m),
    )
    assert report.sw_batch_size == 1
    assert "out of memory" in report.notes[0]
    assert any("retrying" in m for m in messages)
    assert probs.shape == (3, 128, 64, 64)


def test_fallback_plan_goes_to_cpu_from_gpu():
    plan = fallback_plan(torch.device("cuda:0"), 4)
    assert [(d.type, b) for d, b in plan] == [("cuda", 4), ("cuda", 1), ("cpu", 1)]
    assert [(d.type, b) for d, b in fallback_plan(torch.device("cpu"), 1)] == [("cpu", 1)]


def test_tta_runs_eight_mirrored_passes():
    net = CountingNet()
    volume = np.random.default_rng(1).standard_normal((1, 64, 64, 64)).astype(np.float32)
    probs, _ = predict_probabilities(net, volume, (64, 64, 64), InferenceSettings(tta=True), torch.device("cpu"))
    assert net.calls == 8
    assert np.allclose(probs[0], 1 / (1 + np.exp(-volume[0])), atol=1e-4)  # flips undone correctly


def test_brats_region_label_round_trip_both_conventions():
    rng = np.random.default_rng(0)
    brats = schema("brats_regions")
    for convention, et in (("brats2021", 4), ("brats2023", 3)):
        labels = rng.choice([0, 1, 2, et], size=(20, 20, 20)).astype(np.uint8)
        regions = brats.labels_to_regions(labels, convention)
        assert np.array_equal(regions[1], labels > 0)  # WT
        assert np.array_equal(regions[0], (labels == 1) | (labels == et))  # TC
        assert np.array_equal(brats.regions_to_labels(regions, convention), labels)


def test_overlapping_regions_resolve_as_brainsegfounder():
    brats = schema("brats_regions")
    tc, wt, et = np.zeros((3, 4), bool)
    wt[:] = True
    tc[1:] = True
    et[3] = True
    et[0] = True  # ET outside TC: ET still wins, as ET is written last
    assert list(brats.regions_to_labels(np.stack([tc, wt, et]))) == [4, 1, 1, 4]


def test_brain_box_stays_inside_the_volume():
    volume = np.zeros((1, 30, 30, 30), np.float32)
    volume[0, 0:10, 5:25, 28:30] = 1
    box = BrainBox.of(volume, margin=4)
    assert box.start == (0, 1, 24)
    assert box.end == (14, 29, 30)
    assert np.array_equal(box.paste(box.crop(volume)), volume)
