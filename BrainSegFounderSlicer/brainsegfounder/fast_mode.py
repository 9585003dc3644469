"""Fast mode, per model: a setting chosen from measurements and stored with the model.

A fast setting trades window overlap, window size and precision for time. What that costs
depends on the model: the demo model, trained on 64^3 crops, lost 0.37 Dice of whole tumour
when it ran in one 96^3 window (a field of view it never saw). So nothing is assumed:

* candidates never use a window larger than the model's training ROI;
* each candidate is run beside the default on cases with a ground truth (the sample case and a
  held-out synthetic 1 mm case for the shipped models), and its cost is the Dice it loses
  against the default's, per region and case;
* the cheapest in time whose cost is at most MAX_DICE_COST in every region of every case is
  stored in the model's metadata (``meta.fast``) with its measurements; none passing, none is
  stored, and the model offers no fast mode (``--fast`` says so and why).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import UserError

if TYPE_CHECKING:
    from .checkpoints import ModelMeta
    from .inference import InferenceSettings

MAX_DICE_COST = 0.02  # the most Dice a fast setting may lose in any region of any measured case
SETTINGS = ("roi_size", "overlap", "precision")


def candidates(roi: Sequence[int]) -> List[dict]:
    """Settings to try, none with windows beyond the training ROI ``roi``: less overlap, bf16
    where the device has it natively, and windows one step (32) smaller where that stays >= 64
    (fewer padded tokens in the Swin stages)."""
    roi = [int(r) for r in roi]
    smaller = [max(64, r - 32) for r in roi]
    rows = [
        {"roi_size": roi, "overlap": 0.25, "precision": "bf16-native"},
        {"roi_size": roi, "overlap": 0.25, "precision": "fp32"},
        {"roi_size": roi, "overlap": 0.5, "precision": "bf16-native"},
    ]
    if smaller != roi:
        rows.insert(0, {"roi_size": smaller, "overlap": 0.25, "precision": "bf16-native"})
    return rows


def apply(settings: "InferenceSettings", meta: "ModelMeta") -> "InferenceSettings":
    """``settings`` with the model's measured fast setting, except what was asked for explicitly."""
    if not meta.fast:
        raise UserError(
            f"model {meta.name} has no measured fast mode (what it would cost in accuracy is unknown); "
            "segment without --fast"
        )
    chosen = {k: meta.fast[k] for k in SETTINGS if k not in settings.explicit}
    if "roi_size" in chosen:
        chosen["roi_size"] = tuple(int(r) for r in chosen["roi_size"])
    return replace(settings, **chosen)


def describe(fast: Optional[dict]) -> str:
    """One line for help texts, tooltips and tables."""
    if not fast:
        return "no fast mode (not measured)"
    roi = "x".join(str(r) for r in fast["roi_size"])
    return (
        f"{fast['speedup']:.1f}x faster, at most {fast['max_dice_cost']:.3f} Dice lost "
        f"(windows {roi}, overlap {fast['overlap']}, {fast['precision']})"
    )


# (name, [(modality, path)], ground-truth path, its BraTS label convention)
Case = Tuple[str, Sequence[Tuple[str, str]], str, str]


def measure(
    model: str,
    cases: Sequence[Case],
    device: str = "cpu",
    progress: Callable[[str], None] = lambda line: None,
    repeats: int = 3,
) -> Dict:
    """Run the default and every candidate on ``cases``; returns what ``meta.fast`` stores
    (the chosen setting, or ``None`` under ``"chosen"`` when none passes) with every figure."""
    import SimpleITK as sitk

    from .inference import InferenceSettings
    from .metrics import region_dice
    from .segment import Segmenter, load_inputs

    default = Segmenter(model, device=device)
    # On the CPU the process's CPU seconds: other work on a shared machine stretches wall time
    # (measured: 7 to 37 s for the same run) but hardly the CPU time the run itself needs.
    clock = time.process_time if default.device.type == "cpu" else time.perf_counter
    rows = [{"setting": "default", **{k: _plain(getattr(default.settings, k)) for k in SETTINGS}}]
    rows[0]["roi_size"] = list(default.roi)
    rows += [{"setting": f"candidate {i + 1}", **c} for i, c in enumerate(candidates(default.roi))]
    schema = default.schema
    segmenters = [default]
    for row in rows[1:]:
        values = {k: row[k] for k in SETTINGS}
        settings = InferenceSettings(**{**values, "roi_size": tuple(values["roi_size"])})
        segmenters.append(Segmenter(model, device=device, settings=settings))
    for row in rows:
        row["cases"] = {}
    for name, inputs, truth_path, labels in cases:
        images, _, _ = load_inputs(dict(inputs))
        truth = schema.labels_to_regions(sitk.GetArrayFromImage(sitk.ReadImage(truth_path)), labels)
        times = [[] for _ in rows]
        results = [None] * len(rows)
        # Round robin, a warm-up round first, the fastest of the rest: whatever else the
        # machine does falls on every setting alike, and only ever adds time.
        for round_ in range(repeats + 1):
            for i, segmenter in enumerate(segmenters):
                started = clock()
                label_image, _, report = segmenter.label_image(images, labels)
                if round_:
                    times[i].append(clock() - started)
                results[i] = (label_image, report)
        for row, (label_image, report), spent in zip(rows, results, times, strict=True):
            predicted = sitk.GetArrayFromImage(label_image)
            dice = region_dice(schema.labels_to_regions(predicted, labels), truth)
            row["cases"][name] = {
                "dice": {c: round(float(d), 4) for c, d in zip(schema.channels, dice, strict=True)},
                "seconds": round(min(spent), 2),
                "windows": report.windows,
                "precision": report.precision,
                "labels": predicted,
            }
            progress(f"{row['setting']}: {name}: Dice {row['cases'][name]['dice']}, {min(spent):.1f} s")
    base = rows[0]["cases"]
    for row in rows:
        costs, agreement = [], {}
        for (name, result), (_, _, _, labels) in zip(row["cases"].items(), cases, strict=True):
            costs += [base[name]["dice"][c] - result["dice"][c] for c in schema.channels]
            ours, theirs = (schema.labels_to_regions(r["labels"], labels) for r in (result, base[name]))
            agree = region_dice(ours, theirs)
            agreement[name] = {c: round(float(d), 4) for c, d in zip(schema.channels, agree, strict=True)}
        row["max_dice_cost"] = round(max(costs), 4)
        row["agreement_dice"] = agreement
        row["seconds"] = round(sum(r["seconds"] for r in row["cases"].values()), 2)
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / max(row["seconds"], 1e-9), 2)
        for result in row["cases"].values():
            result.pop("labels")
    return {
        "chosen": choose(rows),
        "rule": f"the fastest candidate losing at most {MAX_DICE_COST} Dice in every region of every case",
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cases": [case[0] for case in cases],
        "measured": rows,
    }


def choose(rows: Sequence[Dict]) -> Optional[Dict]:
    """The fastest candidate (rows after the first, the default) that is faster than the default
    and loses at most MAX_DICE_COST in every region of every case; None if none is."""
    passing = [r for r in rows[1:] if r["max_dice_cost"] <= MAX_DICE_COST and r["speedup"] > 1.0]
    best = min(passing, key=lambda r: r["seconds"]) if passing else None
    return None if best is None else {k: best[k] for k in (*SETTINGS, "speedup", "max_dice_cost")}


def metadata(report: Dict) -> Optional[Dict]:
    """What a model's ``meta.fast`` holds after :func:`measure`: the chosen setting with the
    evidence, or None (no candidate passed: the model offers no fast mode)."""
    if report["chosen"] is None:
        return None
    return {**report["chosen"], **{k: report[k] for k in ("rule", "device", "date", "cases", "measured")}}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
