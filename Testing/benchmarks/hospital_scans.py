"""Preprocessing of hospital scans: per-step CPU time on a 1 mm case, and the Dice of a segmentation
with and without preprocessing on a case with skull, thick slices and motion.

The case: a synthetic BraTS case (seed 777) inside Colin27's skull and scalp (Debian's
mricron-data), T1ce / T1 / T2 moved by 4-5 degree turns and 2-4 mm shifts, the FLAIR (the
reference) with 5 mm slices. CPU time is the process's (both cores count); the machine is shared,
so wall times vary more.

    .venv/bin/python Testing/benchmarks/hospital_scans.py [--out /tmp/hospital] [--spacing 1]

The Dice part runs the demo model (2 mm) on the case at 2 mm against the synthetic ground truth,
on the FLAIR's 5 mm grid: clean case (one grid, no skull), hospital case with preprocessing,
hospital case with --no-preprocess.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from brainsegfounder.synth.hospital import MOTIONS, write_hospital_case  # noqa: E402


def step_times(scans) -> list:
    """(step, CPU s, wall s, what it found) for each preprocessing step on the model's 1 mm grid."""
    from brainsegfounder import brain_extraction
    from brainsegfounder.geometry import grid_at_spacing, reorient
    from brainsegfounder.model_space import _arrays_on, _image_of
    from brainsegfounder.registration import rigid_register

    images = {m: sitk.ReadImage(str(p), sitk.sitkFloat32) for m, p in scans.items()}
    rows, transforms = [], {}

    def timed(step, work):
        cpu, wall = time.process_time(), time.perf_counter()
        result = work()
        rows.append([step, time.process_time() - cpu, time.perf_counter() - wall, ""])
        return result

    timed("detect skull-stripped", lambda: [brain_extraction.looks_stripped(im) for im in images.values()])
    for name in ("t1ce", "t1", "t2"):
        result = timed(f"register {name} onto flair", lambda n=name: rigid_register(images["flair"], images[n]))
        transforms[name] = result.transform
        rows[-1][3] = f"moved {result.shift_mm_mean:.1f} mm mean, metric {result.metric_after:.2f}"
    grid = grid_at_spacing(reorient(images["flair"], "LPS"), (1.0, 1.0, 1.0))
    volume = timed("resample 4 contrasts to 1 mm", lambda: _arrays_on(images, grid, transforms))
    mask = timed("brain extraction (deepbet, T1)", lambda: brain_extraction.extract_brain(_image_of(volume[2], grid)))
    rows[-1][3] = f"{brain_extraction.mask_ml(mask):.0f} mL"
    rows.append(["total", sum(r[1] for r in rows), sum(r[2] for r in rows), ""])
    return rows


def registration_error(scans, clean) -> dict:
    """Mean error (mm) at brain voxels of each contrast's registration against the known motion."""
    from brainsegfounder.registration import rigid_register
    from brainsegfounder.synth import hospital

    flair = sitk.ReadImage(str(scans["flair"]), sitk.sitkFloat32)
    brain_image = sitk.ReadImage(str(clean["flair"]))
    index = np.argwhere(sitk.GetArrayFromImage(brain_image) > 0)[::50]
    points = np.array([brain_image.TransformIndexToPhysicalPoint([int(v) for v in i[::-1]]) for i in index])
    errors = {}
    for name, (angles, shift) in MOTIONS.items():
        truth = hospital.rigid(hospital.center_of(brain_image), angles, shift)
        found = rigid_register(flair, sitk.ReadImage(str(scans[name]), sitk.sitkFloat32)).transform
        diff = [np.subtract(found.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))) for p in points]
        errors[name] = float(np.linalg.norm(diff, axis=1).mean())
    return errors


def dice_rows(out: Path):
    from brainsegfounder.demo import DEMO_MODEL, dice_per_region
    from brainsegfounder.labels import schema
    from brainsegfounder.model_space import PrepOptions
    from brainsegfounder.segment import Segmenter, segment_files

    clean, scans, truth_path = write_hospital_case(out / "2mm", 2.0)
    segmenter = Segmenter(str(DEMO_MODEL), device="cpu")
    rows = []
    runs = (
        ("clean case (one grid, no skull)", clean, PrepOptions()),
        ("hospital case, preprocessed", scans, PrepOptions()),
        ("hospital case, --no-preprocess", scans, PrepOptions(mode="off")),
    )
    reference = sitk.ReadImage(str(scans["flair"]))
    truth = sitk.Resample(sitk.ReadImage(str(truth_path)), reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    for i, (what, inputs, prep) in enumerate(runs):
        output = out / f"result{i}.nii.gz"
        t0 = time.perf_counter()
        summary = segment_files(
            str(DEMO_MODEL), list(inputs.items()), output, segmenter=segmenter, overwrite=True, preprocessing=prep
        )
        result = sitk.Resample(sitk.ReadImage(str(output)), reference, sitk.Transform(), sitk.sitkNearestNeighbor)
        dice = dice_per_region(result, truth, schema("brats_regions"))
        rows.append((what, dice, time.perf_counter() - t0, summary["warnings"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/hospital-benchmark")
    parser.add_argument("--skip-dice", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    clean, scans, _ = write_hospital_case(out / "1mm", 1.0)
    print("| step (1 mm case, 2 cores) | CPU s | wall s | found |\n|---|---|---|---|")
    for step, cpu, wall, found in step_times(scans):
        print(f"| {step} | {cpu:.1f} | {wall:.1f} | {found} |", flush=True)
    errors = registration_error(scans, clean)
    print("registration error at brain voxels (mm, mean):", {k: round(v, 2) for k, v in errors.items()}, flush=True)
    if not args.skip_dice:
        print("\n| demo model (2 mm) on | TC | WT | ET | seconds | warnings |\n|---|---|---|---|---|---|")
        for what, dice, seconds, warnings in dice_rows(out):
            scores = " | ".join(f"{dice[r]:.3f}" for r in ("TC", "WT", "ET"))
            print(f"| {what} | {scores} | {seconds:.0f} | {len(warnings)} |")


if __name__ == "__main__":
    main()
