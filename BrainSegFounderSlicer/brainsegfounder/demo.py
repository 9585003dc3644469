"""The built-in default job: synthesise a fresh BraTS-like case and segment it end to end.

The model is the demo model shipped in ``Resources/Models``: a tiny SwinUNETR trained with
this project's fine-tuning pipeline on synthetic cases only (the exact command is in
Training/README.md). The case the demo makes comes from a seed the model never saw, and the
demo reports the Dice against its synthetic ground truth. ``world="realistic"`` makes the case
in the realistic synthetic world and segments it with the model trained on that world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .console import dice_table, volume_table
from .errors import UserError
from .labels import schema
from .metrics import region_dice
from .progress import CancelToken, ProgressCallback, null_progress

MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
DEMO_MODEL = MODELS_DIR / "brats-synthetic-demo.pt"
# each synthetic world with the demo model trained on it
DEMO_MODELS = {"classic": DEMO_MODEL, "realistic": MODELS_DIR / "brats-synthetic-realistic.pt"}


def dice_per_region(prediction, truth, label_schema, convention: str = "brats2021") -> dict:
    """Dice per region between two label images on the same grid."""
    import SimpleITK as sitk

    pred = label_schema.labels_to_regions(sitk.GetArrayFromImage(prediction), convention)
    true = label_schema.labels_to_regions(sitk.GetArrayFromImage(truth), convention)
    return {name: round(float(v), 4) for name, v in zip(label_schema.channels, region_dice(pred, true), strict=True)}


def run_demo(
    out: Path,
    spacing: float = 2.0,
    seed: int = 2026,
    device: str = "auto",
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
    overwrite: bool = False,
    world: str = "classic",
) -> dict:
    from .outputs import output_files
    from .segment import segment_files
    from .synth.cohort import case_files, write_cohort
    from .synth.world import world_named

    out = Path(out)
    if world not in DEMO_MODELS:
        raise UserError(f"unknown synthetic world {world!r}; choose {' or '.join(DEMO_MODELS)}")
    model = DEMO_MODELS[world]
    if not model.is_file():
        raise UserError(
            f"the demo model {model} is missing; use a full clone of the repository (the model "
            "ships in Resources/Models) or rebuild it as Training/README.md says"
        )
    files = {name: out / name for name in ("labels.nii.gz", "labels.seg.nrrd", "summary.json", "preview.png")}
    output_files(*files.values(), overwrite=overwrite)  # before the synthetic case is made
    data = out / ("synthetic_brats" + ("" if world == "classic" else f"_{world}") + f"_seed{seed}")
    folder, images, label = case_files("brats2021", 0)
    if not (data / folder).exists():
        write_cohort(
            data,
            kind="brats",
            n=1,
            seed=seed,
            spacing=spacing,
            folds=1,
            progress=progress,
            cancel=cancel,
            world=world_named(world),
        )
    inputs = [(modality, str(data / rel)) for modality, rel in images.items()]
    summary = segment_files(
        str(model),
        inputs,
        files["labels.nii.gz"],
        seg_nrrd=files["labels.seg.nrrd"],
        summary_path=files["summary.json"],
        preview_path=files["preview.png"],
        overwrite=overwrite,
        device=device,
        progress=progress,
        cancel=cancel,
    )
    import SimpleITK as sitk

    prediction = sitk.ReadImage(str(files["labels.nii.gz"]))  # may be empty: no input checks here
    truth = sitk.ReadImage(str(data / label))
    dice = dice_per_region(prediction, truth, schema("brats_regions"))
    notes = "".join(f"note: {note}\n" for note in summary["notes"])
    message = (
        f"synthetic input case (four contrasts and its ground truth): {data / folder}\n"
        f"wrote {out}/labels.nii.gz, labels.seg.nrrd (open it in 3D Slicer), summary.json and preview.png\n"
        f"{volume_table(summary['regions'])}\n"
        f"Dice against the synthetic ground truth:\n{dice_table(dice)}\n"
        f"{notes}"
        "For patients' MRI use BrainSegFounder's released BraTS weights: brainsegfounder segment --model "
        "PATH_TO_WEIGHTS.pth --task brats --input flair=... --input t1ce=... --input t1=... --input t2=..."
    )
    return {"output": str(out), "dice": dice, "message": message}
