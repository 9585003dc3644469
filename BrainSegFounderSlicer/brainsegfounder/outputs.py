"""Writing results: label map, Slicer segmentation (.seg.nrrd) and a JSON summary.

All files of one run are written to temporary names first and renamed together at the end,
so a failure leaves no partial output and never touches files that existed before.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk
import slicerio

from .atomic import atomic_path, ensure_writable_dir
from .errors import UserError
from .labels import Segment

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".seg.nrrd", *LABEL_SUFFIXES, ".json"):
        if name.endswith(suffix):
            return suffix
    return path.suffix


def check_output_paths(
    output: os.PathLike, seg_nrrd: Optional[os.PathLike] = None, summary: Optional[os.PathLike] = None
) -> None:
    """Fail before any work if an output cannot be written or has a format we do not write."""
    output = Path(output)
    if not output.name.lower().endswith(LABEL_SUFFIXES):
        raise UserError(f"output {output} must end in one of {', '.join(LABEL_SUFFIXES)}")
    if seg_nrrd is not None and not str(seg_nrrd).lower().endswith(".nrrd"):
        raise UserError(f"--seg-nrrd {seg_nrrd} must end in .seg.nrrd")
    if summary is not None and not str(summary).lower().endswith(".json"):
        raise UserError(f"--summary {summary} must end in .json")
    paths = [Path(p) for p in (output, seg_nrrd, summary) if p is not None]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserError("the output, --seg-nrrd and --summary paths must differ")
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a folder; give a file name")
        ensure_writable_dir(path.parent)


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
    labels: sitk.Image,
    output: os.PathLike,
    segments: Dict[int, Segment],
    seg_nrrd: Optional[os.PathLike] = None,
    summary: Optional[dict] = None,
    summary_path: Optional[os.PathLike] = None,
) -> None:
    """Write every requested output, all or nothing."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(output, suffix=_suffix(Path(output))))
        sitk.WriteImage(labels, str(tmp), useCompression=True)
        if seg_nrrd is not None:
            tmp = stack.enter_context(atomic_path(seg_nrrd, suffix=".seg.nrrd"))
            slicerio.write_segmentation(str(tmp), segmentation_dict(labels, segments))
        if summary_path is not None:
            tmp = stack.enter_context(atomic_path(summary_path, suffix=".json"))
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
