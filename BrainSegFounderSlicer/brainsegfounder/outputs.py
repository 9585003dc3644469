"""Writing results: label map, Slicer segmentation (.seg.nrrd) and a JSON summary.

All files of one run are checked before the work and written together after it
(:mod:`.output_files`): a failure leaves no partial output and never touches files that
existed before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicerio

from .errors import UserError
from .imageio import write_image
from .labels import Segment
from .output_files import OutputFiles

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def output_files(
    output: os.PathLike,
    seg_nrrd: Optional[os.PathLike] = None,
    summary: Optional[os.PathLike] = None,
    preview: Optional[os.PathLike] = None,
    overwrite: bool = False,
    inputs: Sequence[Tuple[str, os.PathLike]] = (),
    dicom_seg: Optional[os.PathLike] = None,
    qc: Optional[os.PathLike] = None,
    uncertainty: Optional[os.PathLike] = None,
) -> OutputFiles:
    """The outputs of one segmentation, checked before any work (formats, inputs, existing files)."""
    for what, path in (("output", output), ("--uncertainty", uncertainty)):
        if path is not None and not Path(path).name.lower().endswith(LABEL_SUFFIXES):
            raise UserError(f"{what} {path} must end in one of {', '.join(LABEL_SUFFIXES)}")
    for what, path, suffix in (
        ("--seg-nrrd", seg_nrrd, ".seg.nrrd"),
        ("--summary", summary, ".json"),
        ("--preview", preview, ".png"),
        ("--dicom-seg", dicom_seg, ".dcm"),
        ("--qc", qc, ".png"),
    ):
        if path is not None and not str(path).lower().endswith(suffix):
            raise UserError(f"{what} {path} must end in {suffix}")
    targets = {
        "output": output,
        "--seg-nrrd": seg_nrrd,
        "--summary": summary,
        "--preview": preview,
        "--dicom-seg": dicom_seg,
        "--qc": qc,
        "--uncertainty": uncertainty,
    }
    return OutputFiles(targets, overwrite=overwrite, inputs=inputs).check()


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def segmentation_dict(labels: sitk.Image, segments: Dict[int, Segment]) -> dict:
    """A slicerio segmentation: one layer, one segment per label value, terminology-coded."""
    voxels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0).astype(np.uint8)  # (k,j,i) -> (i,j,k)
    entries = []
    for value, segment in sorted(segments.items()):
        entries.append(
            {
                "id": segment.key,
                "name": segment.name,
                "color": list(segment.color),
                "labelValue": int(value),
                "layer": 0,
                "terminology": segment.terminology,
            }
        )
    return {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps(labels),
        "segments": entries,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
    }


def write_outputs(
    files: OutputFiles,
    labels: sitk.Image,
    segments: Dict[int, Segment],
    summary: Optional[dict] = None,
    images: Optional[Dict[str, sitk.Image]] = None,
    dicom_seg: Optional[Callable[[Path], None]] = None,
    qc: Optional[Callable[[Path], None]] = None,
    uncertainty: Optional[sitk.Image] = None,
) -> None:
    """Write every output of ``files`` (see :func:`output_files`), all or nothing; the preview
    shows ``images`` with the labels overlaid; ``dicom_seg(path)`` writes the DICOM SEG, ``qc(path)``
    the preprocessing QC picture; ``uncertainty`` is the uncertainty map (uncertainty.py)."""
    with files.write() as tmp:
        write_image(labels, tmp["output"])
        if "--uncertainty" in tmp:
            write_image(uncertainty, tmp["--uncertainty"])
        if "--seg-nrrd" in tmp:
            slicerio.write_segmentation(str(tmp["--seg-nrrd"]), segmentation_dict(labels, segments))
        if "--summary" in tmp:
            tmp["--summary"].write_text(json.dumps(summary, indent=2) + "\n")
        if "--preview" in tmp:
            from .preview import draw_preview

            draw_preview(images or {}, tmp["--preview"], labels)
        if "--dicom-seg" in tmp:
            dicom_seg(tmp["--dicom-seg"])
        if "--qc" in tmp:
            qc(tmp["--qc"])
