"""Fine-tuning's live plot on the page (an inline SVG of the Lib's epoch metrics)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from brainsegfounder_web.metrics_plot import metrics_svg


def _series(svg):
    root = ET.fromstring(svg)
    return {
        p.get("data-series"): [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
        for p in root.iter("{http://www.w3.org/2000/svg}polyline")
    }


def test_loss_and_dice_are_drawn_per_epoch_and_unmeasured_values_left_out():
    rows = [
        {"epoch": 0.0, "loss": math.nan, "dice": 0.40},  # the base model's score before training
        {"epoch": 1.0, "loss": 1.6, "dice": 0.55},
        {"epoch": 2.0, "loss": 0.9, "dice": math.nan},
    ]
    svg = metrics_svg(rows)
    series = _series(svg)
    assert [len(series["loss"]), len(series["dice"])] == [2, 2]
    (x0, y0), (x1, y1) = series["dice"]
    assert x0 < x1
    assert y1 < y0
    (_lx1, ly1), (lx2, ly2) = series["loss"]
    assert ly2 > ly1  # the loss fell
    assert lx2 > x1  # epoch 2 is right of epoch 1
    assert "held-out Dice 0.550" in svg
    assert "training loss 0.900" in svg
    assert "epoch 2" in svg


def test_nothing_is_drawn_before_the_first_epoch():
    assert metrics_svg([]) == ""
