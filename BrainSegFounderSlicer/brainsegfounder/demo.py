"""The built-in default job: synthesise a BraTS-like case and segment it end to end.

Until a trained demo model ships, the model is a randomly initialised tiny SwinUNETR: the
run exercises every step (synthesis, I/O, geometry, inference, outputs) but its labels are
NOT meaningful, and the Dice it reports against the synthetic ground truth shows that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .atomic import ensure_writable_dir
from .progress import CancelToken, ProgressCallback, null_progress

DEMO_ROI = (96, 96, 96)


def dice_per_region(prediction, truth, label_schema, convention: str = "brats2021") -> dict:
    """MONAI Dice per region between two label images on the same grid."""
    import SimpleITK as sitk
    import torch
    from monai.metrics import compute_dice

    pred = label_schema.labels_to_regions(sitk.GetArrayFromImage(prediction), convention)
    true = label_schema.labels_to_regions(sitk.GetArrayFromImage(truth), convention)
    dice = compute_dice(torch.from_numpy(pred[None]).float(), torch.from_numpy(true[None]).float(),
                        include_background=True, ignore_empty=False)[0]
    return {name: round(float(v), 4) for name, v in zip(label_schema.channels, dice)}


def run_demo(out: Path, spacing: float = 2.0, seed: int = 2026, device: str = "auto",
             progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None) -> dict:
    from .checkpoints import init_model
    from .labels import schema
    from .preview import save_preview_from_files
    from .segment import segment_files
    from .synth.cohort import case_files, write_cohort

    out = ensure_writable_dir(out)
    model = out / "untrained-tiny-brats.pt"
    if not model.exists():
        progress("model", 0, 1, "creating an untrained tiny model (no trained demo model ships yet)")
        init_model(model, "tiny", "brats", seed=0, roi=DEMO_ROI)
    data = out / f"synthetic_brats_seed{seed}"
    folder, images, label = case_files("brats2021", 0)
    if not (data / folder).exists():
        write_cohort(data, kind="brats", n=1, seed=seed, spacing=spacing, folds=1, progress=progress, cancel=cancel)
    inputs = [(modality, str(data / rel)) for modality, rel in images.items()]
    summary = segment_files(str(model), inputs, out / "labels.nii.gz", seg_nrrd=out / "labels.seg.nrrd",
                            summary_path=out / "summary.json", device=device, progress=progress, cancel=cancel)
    import SimpleITK as sitk

    prediction = sitk.ReadImage(str(out / "labels.nii.gz"))  # may be empty: no input checks here
    truth = sitk.ReadImage(str(data / label))
    dice = dice_per_region(prediction, truth, schema("brats_regions"))
    save_preview_from_files(inputs, out / "preview.png", out / "labels.nii.gz")
    regions = ", ".join(f"{k} {v['volume_ml']:.1f} mL" for k, v in summary["regions"].items())
    message = (f"wrote {out}/labels.nii.gz, labels.seg.nrrd, summary.json and preview.png ({regions}).\n"
               f"Dice against the synthetic ground truth: {dice}.\n"
               "NOTE: the demo model is UNTRAINED (random weights): these labels are not meaningful. "
               "Segment real scans with a trained model: brainsegfounder segment --model PATH ...")
    return {"output": str(out), "dice": dice, "message": message}
