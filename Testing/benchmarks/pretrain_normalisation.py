"""Pretraining intensities: z-score over the whole brain (ours) or over each crop, measured against
what fine-tuning and inference feed the network.

    .venv/bin/python Testing/benchmarks/pretrain_normalisation.py [--n 2] [--crops 40] [--out fig.json]

A fresh synthetic cohort at 1 mm (``--n`` BraTS cases, 4 contrasts, and ``--n`` healthy
UK Biobank-style subjects, T1 + FLAIR) is read as pretraining reads it (the engine's path:
resampling, the recipe's orientation, brain box), but before any normalisation. Fine-tuning and
``segment`` z-score each channel over the brain's (nonzero) voxels of the whole volume: that is
the reference value of each voxel. On the same random 96^3 crops the script compares

- whole-brain z-score, what our pretraining uses: the reference itself (its disk cache stores
  float16, whose rounding is reported);
- per-crop z-score (over the crop's nonzero voxels, per channel; what BrainSegFounder's
  fine-tuning applied to each training crop): how far it moves each brain voxel from its
  reference value, in units of the whole brain's SD, with the crop's own scale and shift;

and BrainSegFounder's pretraining map (CT window -1000..1000 -> 0..1, clipped): the share of
brain voxels it saturates at 1. Crops come from three samplers: ours (inside the brain box,
4-voxel margin), BrainSegFounder's (the foreground box rounded up to multiples of 96, so it
reaches into the background) and ``edge`` (a probe: crops that reach 2-16 voxels into the brain
box through each face, so mostly background; random 96^3 crops of a 1 mm brain rarely are);
results are grouped by the crop's brain share (voxels nonzero in any
channel). Crops with fewer than 2 brain voxels in a channel are left out of that channel's row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1] / "BrainSegFounderSlicer"), str(HERE.parents[1] / "Training")]

from brainsegfounder.preprocess import BrainBox, normalize  # noqa: E402
from brainsegfounder.segment import load_inputs, to_network_array  # noqa: E402
from brainsegfounder.synth.cohort import write_cohort  # noqa: E402
from brainsegfounder_training.pretraining.subjects import discover_subjects  # noqa: E402

ROI = (96, 96, 96)
BINS = ((0.0, 0.02), (0.02, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.01))
KINDS = {"brats": (["flair", "t1ce", "t1", "t2"], "LPS"), "healthy": (["t1", "flair"], "LPS")}


def raw_volume(subject, orientation):
    images, _, _ = load_inputs(dict(subject.images))
    return to_network_array(images, orientation)


def crops_of(stacked, channels, sampler, n, seed):
    """``n`` random ROI crops of ``stacked`` ((raw; reference) channels), drawn as ``sampler`` draws."""
    from monai.transforms import CropForeground, RandSpatialCropSamples, SpatialPad

    if sampler == "ours":  # pretraining/data.py: brain box (read_network_volume), pad, random crops
        region = BrainBox.of(stacked[:channels]).crop(stacked)
    elif sampler == "edge":  # a probe for mostly-background crops: each face of the brain box
        return edge_crops(stacked, channels)
    else:  # BrainSegFounder: CropForegroundd(k_divisible=roi) on the whole volume, random crops
        region = CropForeground(select_fn=lambda x: x > 0, channel_indices=range(channels), k_divisible=list(ROI))(
            stacked
        )
    region = SpatialPad(ROI)(np.asarray(region))
    crop = RandSpatialCropSamples(ROI, num_samples=n, random_size=False)
    crop.set_random_state(seed=seed)
    return [np.asarray(c) for c in crop(region)]


def edge_crops(stacked, channels, overlaps=(2, 4, 8, 16)):
    """ROI crops that reach ``overlaps`` voxels into the brain box through each of its six faces,
    centred on the box in the other two axes; the rest of the crop is background."""
    box = BrainBox.of(stacked[:channels], margin=0)
    pad = [(0, 0)] + [(r, r) for r in ROI]
    padded = np.pad(stacked, pad)  # zeros around the image, so a crop may leave its field of view
    crops = []
    for axis in range(3):
        for side in (0, 1):
            for depth in overlaps:
                start = []
                for a in range(3):
                    lo, hi = box.start[a] + ROI[a], box.end[a] + ROI[a]
                    if a != axis:
                        start.append((lo + hi) // 2 - ROI[a] // 2)
                    else:
                        start.append(lo + depth - ROI[a] if side == 0 else hi - depth)
                crops.append(padded[(slice(None), *(slice(b, b + r) for b, r in zip(start, ROI, strict=True)))])
    return crops


def measure(raw, channels, sampler, n, seed):
    reference = normalize(raw)  # what fine-tuning and segment feed the network
    rows = []
    for c in crops_of(np.concatenate([raw, reference]), channels, sampler, n, seed):
        raw_c, ref_c = c[:channels], c[channels:]
        brain = (raw_c > 0).any(0)
        share = float(brain.mean())
        per_crop = normalize(raw_c)
        row = {"share": share, "dev": [], "scale": [], "shift": [], "max_abs": [], "f16": []}
        for ch in range(channels):
            inside = raw_c[ch] > 0
            if inside.sum() < 2:
                continue
            dev = np.abs(per_crop[ch][inside] - ref_c[ch][inside])
            # per_crop = scale * reference + shift on the channel's brain voxels
            x, y = ref_c[ch][inside].astype(np.float64), per_crop[ch][inside].astype(np.float64)
            scale = float(np.std(y) / np.std(x)) if np.std(x) > 0 else float("nan")
            row["dev"].append(float(dev.mean()))
            row["scale"].append(scale)
            row["shift"].append(float(np.mean(y) - scale * np.mean(x)))
            row["max_abs"].append(float(np.abs(per_crop[ch][inside]).max()))
            row["f16"].append(float(np.abs(ref_c[ch][inside].astype(np.float16) - ref_c[ch][inside]).max()))
        if row["dev"]:
            rows.append(row)
    return rows


def ct_window_saturation(raw):
    """Share of each channel's brain voxels that BrainSegFounder's pretraining map clips at 1."""
    return [float((raw[ch][raw[ch] > 0] >= 1000).mean()) for ch in range(raw.shape[0])]


def summarise(rows):
    out = []
    for lo, hi in BINS:
        part = [r for r in rows if lo <= r["share"] < hi]
        if not part:
            out.append({"brain_share": f"{lo:.0%}-{min(hi, 1):.0%}", "crops": 0})
            continue
        dev = np.array([d for r in part for d in r["dev"]])
        scale = np.array([s for r in part for s in r["scale"]])
        shift = np.array([s for r in part for s in r["shift"]])
        out.append(
            {
                "brain_share": f"{lo:.0%}-{min(hi, 1):.0%}",
                "crops": len(part),
                "dev_median": float(np.median(dev)),
                "dev_p95": float(np.percentile(dev, 95)),
                "scale_p5_p95": [float(np.percentile(scale, 5)), float(np.percentile(scale, 95))],
                "shift_p5_p95": [float(np.percentile(shift, 5)), float(np.percentile(shift, 95))],
                "max_abs_value": float(max(m for r in part for m in r["max_abs"])),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="subjects per kind (default 2)")
    parser.add_argument("--crops", type=int, default=40, help="random crops per subject and sampler (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind, (modalities, orientation) in KINDS.items():
            root = write_cohort(Path(scratch) / kind, kind=kind, n=args.n, seed=args.seed + 7, spacing=1.0, folds=1)
            subjects, _ = discover_subjects(root, modalities)
            rows = {"ours": [], "original": [], "edge": []}
            saturation = []
            for index, subject in enumerate(subjects):
                raw = raw_volume(subject, orientation)
                saturation.append(ct_window_saturation(raw))
                for sampler in rows:
                    rows[sampler] += measure(raw, len(modalities), sampler, args.crops, args.seed * 1000 + index)
            figures[kind] = {
                "modalities": modalities,
                "ct_window_saturated_share": [float(np.mean(s)) for s in zip(*saturation, strict=True)],
                "float16_cache_max_error": float(max(f for r in rows["ours"] for f in r["f16"])),
                **{sampler: summarise(r) for sampler, r in rows.items()},
            }
    for kind, fig in figures.items():
        print(f"\n{kind} ({', '.join(fig['modalities'])}), {args.n} subjects at 1 mm, 96^3 crops")
        print("whole-brain z-score (ours): every voxel exactly its fine-tuning value; float16 cache error")
        print(f"  at most {fig['float16_cache_max_error']:.4f} SD")
        shares = ", ".join(
            f"{m} {s:.0%}" for m, s in zip(fig["modalities"], fig["ct_window_saturated_share"], strict=True)
        )
        print(f"CT window -1000..1000 -> 0..1: brain voxels clipped at 1: {shares}")
        print("per-crop z-score vs the whole-brain value (SD of the whole brain):")
        print(
            f"  {'sampler':9s} {'brain':>8s} {'crops':>5s} {'|dev| med':>9s} {'|dev| p95':>9s} "
            f"{'scale p5..p95':>14s} {'shift p5..p95':>15s} {'max |z|':>8s}"
        )
        for sampler in ("ours", "original", "edge"):
            for row in fig[sampler]:
                if not row["crops"]:
                    print(f"  {sampler:9s} {row['brain_share']:>8s} {0:5d}")
                    continue
                scale, shift = row["scale_p5_p95"], row["shift_p5_p95"]
                print(
                    f"  {sampler:9s} {row['brain_share']:>8s} {row['crops']:5d} {row['dev_median']:9.3f} "
                    f"{row['dev_p95']:9.3f} {scale[0]:6.2f}..{scale[1]:<6.2f} {shift[0]:+6.2f}..{shift[1]:<+7.2f} "
                    f"{row['max_abs_value']:8.2f}"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
