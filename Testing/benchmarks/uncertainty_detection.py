"""How well each uncertainty measure finds the voxels a model gets wrong (not a test).

For synthetic BraTS cases, runs the model once per mirror flip and prints, per case, the ROC AUC
of each measure as a detector of wrong voxels (any region) over the brain: the variance of the
8 flips' probabilities (what ``segment --uncertainty`` writes), the entropy of their mean, the
entropy of one unflipped pass, and the variance of 4 and 2 flips, with the Dice between the
voxels each flags (>= the summary's threshold) and those the 8 flips' variance flags. The
network runs at the cases' own voxel size (as ``--spacing input``): with the demo model (2 mm)
on 3 mm cases it errs often enough to measure.

    python Testing/benchmarks/uncertainty_detection.py [--model MODEL.pt] [--spacing 3] [--seed 101] [--n 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_roc_auc

from brainsegfounder.demo import DEMO_MODEL
from brainsegfounder.inference import flip_sets
from brainsegfounder.preprocess import BrainBox, normalize
from brainsegfounder.segment import Segmenter, to_network_array
from brainsegfounder.synth.cohort import case_files, write_cohort
from brainsegfounder.uncertainty import UNCERTAIN_VARIANCE

SUBSETS = {"8 flips": flip_sets(True, 8), "4 flips": flip_sets(True, 4), "2 flips": [(), (2, 3, 4)]}


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def auc(score: np.ndarray, wrong: np.ndarray) -> float:
    as_tensor = [torch.from_numpy(a.astype(np.float32)) for a in (score, wrong)]
    return float(compute_roc_auc(*as_tensor))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def flip_probabilities(segmenter: Segmenter, volume: np.ndarray) -> dict:
    """{flip axes: probabilities (C, ...)} on the whole volume, one sliding window run each."""
    box = BrainBox.of(volume)
    x = torch.from_numpy(normalize(box.crop(volume), segmenter.meta.normalization)[None])
    out = {}
    with torch.inference_mode():
        for axes in flip_sets(True, 8):
            logits = sliding_window_inference(
                torch.flip(x, axes) if axes else x, segmenter.roi, 1, segmenter.network, overlap=0.5, mode="gaussian"
            )
            p = torch.sigmoid(logits)
            out[axes] = box.paste((torch.flip(p, axes) if axes else p)[0].numpy())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO_MODEL))
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the synthetic cases (mm)")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--n", type=int, default=2, help="cases")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        cases = dict(kind="brats", n=args.n, seed=args.seed, spacing=args.spacing, folds=1)
        root = write_cohort(Path(folder) / "data", **cases)
        print(f"{'case':5} {'measure':28} {'AUC':>6} {'Dice vs 8-flip variance':>24}")
        for index in range(args.n):
            _, images, label = case_files("brats2021", index)
            orientation = segmenter.meta.orientation
            volume = to_network_array([sitk.ReadImage(str(root / p)) for p in images.values()], orientation)
            truth = to_network_array([sitk.ReadImage(str(root / label))], orientation)[0].astype(int)
            probs = flip_probabilities(segmenter, volume)
            brain = np.any(volume != 0, axis=0)
            true = segmenter.schema.labels_to_regions(truth, "brats2021")
            flagged8 = None
            rows = []
            for name, flips in SUBSETS.items():
                stack = np.stack([probs[f] for f in flips])
                mean, variance = stack.mean(0), stack.var(0).max(0)
                wrong = np.any(((mean > 0.5) & brain) != true, axis=0)[brain]
                flagged = variance[brain] >= UNCERTAIN_VARIANCE
                flagged8 = flagged if flagged8 is None else flagged8
                rows.append((f"variance, {name}", auc(variance[brain], wrong), dice(flagged, flagged8)))
                if name == "8 flips":
                    rows.append(("entropy of the mean, 8 flips", auc(entropy(mean).max(0)[brain], wrong), None))
                    rows.append(("entropy of one pass", auc(entropy(probs[()]).max(0)[brain], wrong), None))
            for measure, value, agreement in rows:
                print(f"{index:<5} {measure:28} {value:6.3f} {'' if agreement is None else f'{agreement:.3f}':>24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
