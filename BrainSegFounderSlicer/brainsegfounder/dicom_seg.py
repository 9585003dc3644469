"""DICOM out: the label map as a DICOM Segmentation object (highdicom) that references the
source series, with the segment names, colours and SNOMED codes of the seg.nrrd.

The label map lies on the reference input's grid, which for a DICOM reference is its series'
own grid; each frame of the SEG is placed on one source slice (matched by position), so
viewers (Slicer's DICOM module, OHIF) overlay it on that series. Label values become segment
numbers 1..N in label order (DICOM SEG numbers segments from 1 without gaps); each segment's
tracking ID is its short name (NCR, ED, ET, lesion) and its label value is in the segment
description, so a reader gets the label map back exactly (:func:`read_dicom_seg`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .labels import Segment

SUFFIX = ".dcm"
_CATEGORY_DEFAULT = ("SCT", "49755003", "Morphologically Altered Structure")
_BRAIN = ("SCT", "12738006", "Brain")
LABEL_PREFIX = "label value "


def source_files(path: os.PathLike, label: str = "the reference input") -> List[str]:
    """The files of the DICOM series an input was read from (a study's chosen series or a series
    folder); a :class:`UserError` when the input is not DICOM."""
    files = getattr(path, "dicom_files", None)
    if files:
        return list(files)
    folder = Path(path)
    if folder.is_dir():
        from .imageio import _dicom_series_files

        return _dicom_series_files(folder, label)
    raise UserError(
        f"--dicom-seg needs {label} from DICOM (--study FOLDER or a DICOM series folder), but it is "
        f"{folder.name}; a DICOM Segmentation must reference the DICOM series it was made on"
    )


def check_request(path: Optional[os.PathLike], inputs: Sequence[Tuple[str, os.PathLike]]) -> None:
    """What can be checked before the work: the name, and that some input is DICOM."""
    if path is None:
        return
    if not str(path).lower().endswith(SUFFIX):
        raise UserError(f"--dicom-seg {path} must end in {SUFFIX}")
    if importlib.util.find_spec("highdicom") is None:
        raise UserError("--dicom-seg needs the Python package highdicom: pip install 'highdicom>=0.28,<0.30'")
    if not any(getattr(p, "dicom_files", None) or Path(p).is_dir() for _, p in inputs):
        raise UserError(
            "--dicom-seg needs the scans from DICOM (--study FOLDER or --input NAME=DICOM_SERIES_FOLDER); "
            "all inputs are image files"
        )


def check_grid(files: Sequence[str], reference: sitk.Image) -> None:
    """Before the work: the reference image is on the grid of the series in ``files``."""
    import pydicom

    _sort_on_grid([pydicom.dcmread(f, stop_before_pixels=True) for f in files], reference)


def _code(triple: Sequence[str]):
    from highdicom.sr.coding import CodedConcept

    scheme, value, meaning = triple
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _sort_on_grid(datasets, labels: sitk.Image) -> List[int]:
    """The label map's slice index of each source dataset; a :class:`UserError` when the series
    and the label map do not share a grid (another orientation, size or slice positions)."""
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    size = labels.GetSize()
    indices = []
    for ds in datasets:
        rows, columns = int(ds.Rows), int(ds.Columns)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        if (columns, rows) != tuple(size[:2]) or not np.allclose(
            orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-3
        ):
            raise UserError(
                "--dicom-seg: the label map is not on the grid of the reference DICOM series "
                f"({columns}x{rows} slices oriented {np.round(orientation, 3).tolist()}); segment with "
                "that series as the reference input"
            )
        index = labels.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        k = round(index[2])
        if abs(index[2] - k) > 0.1 or abs(index[0]) > 0.1 or abs(index[1]) > 0.1 or not 0 <= k < size[2]:
            raise UserError(
                f"--dicom-seg: slice {ds.get('InstanceNumber', '?')} of the reference series lies off the label "
                "map's grid; segment with that series as the reference input"
            )
        indices.append(k)
    return indices


def build_dicom_seg(
    labels: sitk.Image,
    segments: Dict[int, Segment],
    files: Sequence[str],
    model_name: str = "BrainSegFounder",
    model_version: str = "",
    series_description: str = "BrainSegFounder segmentation",
):
    """A highdicom ``Segmentation`` of ``labels`` (on the grid of the series in ``files``)."""
    import highdicom as hd
    import pydicom
    from highdicom.color import CIELabColor
    from pydicom.sr.codedict import codes

    from . import __version__

    datasets = [pydicom.dcmread(f) for f in files]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise UserError("--dicom-seg: the reference series is one multi-frame file; this is not supported yet")
    indices = _sort_on_grid(datasets, labels)
    array = sitk.GetArrayFromImage(labels)  # (k, row, column)
    present = sorted(segments)
    numbers = {value: i + 1 for i, value in enumerate(present)}
    frames = np.zeros((len(datasets), *array.shape[1:]), np.uint8)
    for frame, k in enumerate(indices):
        for value, number in numbers.items():
            frames[frame][array[k] == value] = number
    unknown = sorted(set(np.unique(array).tolist()) - {0, *present})
    if unknown:
        raise UserError(f"--dicom-seg: label values {unknown} have no segment description")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64] or "BrainSegFounder",
        family=codes.cid7162.ArtificialIntelligence,
        version=(model_version or __version__)[:64],
    )
    descriptions = []
    for value in present:
        segment = segments[value]
        description = hd.seg.SegmentDescription(
            segment_number=numbers[value],
            segment_label=segment.name[:64],
            segmented_property_category=_code(getattr(segment, "category", _CATEGORY_DEFAULT)),
            segmented_property_type=_code(segment.snomed),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=segment.key,
            anatomic_regions=[_code(_BRAIN)],
            display_color=CIELabColor.from_rgb(*(255.0 * float(c) for c in segment.color)),
        )
        description.SegmentDescription = f"{LABEL_PREFIX}{value}"
        descriptions.append(description)
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=max(int(datasets[0].get("SeriesNumber", 0) or 0), 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="BrainSegFounderSlicer",
        manufacturer_model_name="brainsegfounder",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )


def write_dicom_seg(
    labels: sitk.Image,
    segments: Dict[int, Segment],
    files: Sequence[str],
    path: os.PathLike,
    model_name: str = "BrainSegFounder",
    model_version: str = "",
) -> None:
    """Write ``labels`` as a DICOM SEG to ``path`` (the caller stages it: see outputs.py)."""
    build_dicom_seg(labels, segments, files, model_name, model_version).save_as(str(path))


def read_dicom_seg(
    path: os.PathLike, reference: sitk.Image, files: Sequence[str]
) -> Tuple[sitk.Image, Dict[int, dict]]:
    """A written SEG back as a label map on ``reference``'s grid, and ``{label value: segment}``
    (name, tracking ID, colour as RGB, SNOMED type): the round trip the tests check."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(path))
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sources.values()]
    index_of = dict(zip(sources, _sort_on_grid(datasets, reference), strict=True))
    values, info = {}, {}
    for item in seg.SegmentSequence:
        value = int(str(item.get("SegmentDescription", "")).removeprefix(LABEL_PREFIX))
        values[int(item.SegmentNumber)] = value
        lab = [int(v) for v in item.RecommendedDisplayCIELabValue]
        info[value] = {
            "name": str(item.SegmentLabel),
            "key": str(item.TrackingID),
            "color": [round(c / 255, 3) for c in hd.color.CIELabColor.from_dicom_value(lab).to_rgb(clip=True)],
            "snomed": (
                str(item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator),
                str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue),
                str(item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning),
            ),
        }
    array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    pixels = seg.pixel_array  # (frames, rows, columns) for one segment per frame (BINARY)
    if pixels.ndim == 2:
        pixels = pixels[None]
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        array[index_of[source]][pixels[frame] > 0] = values[number]
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image, info
