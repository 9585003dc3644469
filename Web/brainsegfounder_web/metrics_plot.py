"""Fine-tuning's live plot for the page: training loss and held-out Dice per epoch (the Lib's
``epoch_metrics``), drawn as an inline SVG, so the page needs no plotting library."""

from __future__ import annotations

import math
from html import escape
from typing import Dict, List, Sequence

WIDTH, HEIGHT, PAD = 380, 160, 28
SERIES = (("loss", "training loss", "#d9534f"), ("dice", "held-out Dice", "#2a7ae2"))


def _points(rows: Sequence[Dict[str, float]], key: str, top: float, last_epoch: float) -> List[str]:
    points = []
    for row in rows:
        value = row[key]
        if math.isnan(value):
            continue
        x = PAD + (WIDTH - 2 * PAD) * (row["epoch"] / last_epoch if last_epoch else 0.5)
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value / top if top else 0.0)
        points.append(f"{x:.1f},{y:.1f}")
    return points


def metrics_svg(rows: Sequence[Dict[str, float]]) -> str:
    """An SVG of the rows (epoch, loss, dice); "" before the first epoch is written."""
    if not rows:
        return ""
    last_epoch = max(r["epoch"] for r in rows)
    values = [r[k] for r in rows for k, _, _ in SERIES if not math.isnan(r[k])]
    top = max([1.0, *values])  # Dice is at most 1; a loss above 1 stretches the axis
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        'aria-label="training loss and held-out Dice per epoch">',
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" fill="none" stroke="#bbb"/>',
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10">epoch 0</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="10" text-anchor="end">epoch {last_epoch:g}</text>',
        f'<text x="4" y="{PAD + 4}" font-size="10">{top:.2g}</text>',
    ]
    for i, (key, label, colour) in enumerate(SERIES):
        points = _points(rows, key, top, last_epoch)
        if points:
            parts.append(f'<polyline data-series="{key}" fill="none" stroke="{colour}" stroke-width="2" '
                         f'points="{" ".join(points)}"/>')  # fmt: skip
            last = next(r[key] for r in reversed(rows) if not math.isnan(r[key]))
            parts.append(f'<text x="{PAD + 4 + 180 * i}" y="{PAD - 8}" font-size="11" fill="{colour}">'
                         f"{escape(label)} {last:.3f}</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
