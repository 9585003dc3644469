"""Label schemas: what the network's sigmoid channels mean, and the label maps written from them.

``brats_regions``: three overlapping regions [TC, WT, ET] as BrainSegFounder predicts them,
written as BraTS labels the way BrainSegFounder does: WT -> edema, then TC -> necrotic core,
then ET -> enhancing (later overrides earlier). BraTS 2021 numbers ET 4, BraTS 2023 numbers
it 3. ``lesion``: one channel, lesion = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .errors import UserError

LABEL_CONVENTIONS = ("brats2021", "brats2023")

_MORPH = ["SCT", "49755003", "Morphologically Altered Structure"]
_TISSUE_CATEGORY = ["SCT", "85756007", "Tissue"]
_BRAIN = ["SCT", "12738006", "Brain"]
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
# Slicer's lists lack "Neoplasm, Primary" (86049000) and "Infarct" (55641003): the Slicer module
# ships and loads a terminology of this name for them (Resources/*-BrainSegFounder.term.json).
TERMINOLOGY_CONTEXT = "Segmentation category and type - BrainSegFounder"
OWN_TERMINOLOGY_CODES = ("86049000", "55641003")


def _terminology(code: List[str]) -> dict:
    return {
        "contextName": TERMINOLOGY_CONTEXT if code[1] in OWN_TERMINOLOGY_CODES else GENERAL_ANATOMY,
        "category": _TISSUE_CATEGORY if code[1] == _TISSUE_CATEGORY[1] else _MORPH,
        "type": code,
        "anatomicContextName": "Anatomic codes - DICOM master list",
        "anatomicRegion": _BRAIN,
    }


@dataclass(frozen=True)
class Segment:
    """One label value of a written label map, with its display name, colour and SNOMED code."""

    key: str
    name: str
    color: Tuple[float, float, float]
    snomed: Tuple[str, str, str]

    @property
    def terminology(self) -> dict:
        return _terminology(list(self.snomed))


NCR = Segment("NCR", "Necrotic tumor core", (0.85, 0.15, 0.15), ("SCT", "6574001", "Necrosis"))
ED = Segment("ED", "Peritumoral edema", (0.30, 0.75, 0.30), ("SCT", "79654002", "Edema"))
ET = Segment("ET", "Enhancing tumor", (0.95, 0.85, 0.20), ("SCT", "86049000", "Neoplasm, Primary"))
_TISSUE = ("SCT", "85756007", "Tissue")
_PALETTE = (
    (0.90, 0.30, 0.25),
    (0.25, 0.60, 0.90),
    (0.95, 0.80, 0.20),
    (0.40, 0.80, 0.40),
    (0.70, 0.40, 0.85),
    (0.95, 0.55, 0.15),
    (0.30, 0.85, 0.85),
    (0.85, 0.45, 0.65),
)
MULTILABEL_PREFIX = "multilabel:"
# The BraTS regions the network predicts, as the written labels combine them.
REGION_NAMES = {"TC": "Tumor core", "WT": "Whole tumor", "ET": "Enhancing tumor"}
LESION = Segment("lesion", "Stroke lesion", (0.90, 0.45, 0.10), ("SCT", "55641003", "Infarct"))


@dataclass(frozen=True)
class LabelSchema:
    name: str
    channels: Tuple[str, ...]  # sigmoid output channels, in order

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def is_multilabel(self) -> bool:
        return self.name.startswith(MULTILABEL_PREFIX)

    def label_values(self, convention: str = "brats2021") -> Dict[int, Segment]:
        """Label value -> segment of the written label map."""
        if self.name == "brats_regions":
            return {1: NCR, 2: ED, et_label(convention): ET}
        if self.is_multilabel:
            return {
                i + 1: Segment(name, name, _PALETTE[i % len(_PALETTE)], _TISSUE) for i, name in enumerate(self.channels)
            }
        return {1: LESION}

    def regions_to_labels(self, regions: np.ndarray, convention: str = "brats2021") -> np.ndarray:
        """Binary region channels (C, ...) -> label map (...), uint8."""
        regions = np.asarray(regions).astype(bool)
        if regions.shape[0] != self.num_channels:
            raise ValueError(f"expected {self.num_channels} region channels, got {regions.shape[0]}")
        labels = np.zeros(regions.shape[1:], dtype=np.uint8)
        if self.name == "brats_regions":
            tc, wt, et = regions
            labels[wt] = 2
            labels[tc] = 1
            labels[et] = et_label(convention)
        else:  # lesion, or one channel per label value (a later channel wins where they overlap)
            for value, region in enumerate(regions, start=1):
                labels[region] = value
        return labels

    def labels_to_regions(self, labels: np.ndarray, convention: str = "brats2021") -> np.ndarray:
        """Label map (...) -> binary region channels (C, ...), the network's training target."""
        labels = np.asarray(labels)
        if self.name == "brats_regions":
            from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

            return np.asarray(ConvertToMultiChannelBasedOnBratsClasses(et_label(convention))(labels))
        if self.is_multilabel:
            return np.stack([labels == value for value in range(1, self.num_channels + 1)])
        return (labels > 0)[None]

    def valid_values(self, convention: str = "brats2021") -> Tuple[int, ...]:
        """Label values a ground-truth map of this schema may hold (0 = background)."""
        return (0, *tuple(self.label_values(convention)))


SCHEMAS: Dict[str, LabelSchema] = {
    "brats_regions": LabelSchema("brats_regions", ("TC", "WT", "ET")),
    "lesion": LabelSchema("lesion", ("lesion",)),
}


def schema(name: str) -> LabelSchema:
    """A schema by name; ``multilabel:a,b,c`` is one sigmoid channel per label value 1, 2, 3
    (the generic recipe), so a checkpoint's schema name alone describes its outputs."""
    if name.startswith(MULTILABEL_PREFIX):
        names = tuple(n.strip() for n in name[len(MULTILABEL_PREFIX) :].split(","))
        if not names or not all(names) or len(set(names)) != len(names):
            raise UserError(f"label schema {name!r} needs distinct label names, e.g. multilabel:lesion,edema")
        return LabelSchema(MULTILABEL_PREFIX + ",".join(names), names)
    if name not in SCHEMAS:
        raise UserError(f"unknown label schema {name!r}; known: {', '.join(SCHEMAS)} or multilabel:NAME,NAME")
    return SCHEMAS[name]


def et_label(convention: str) -> int:
    if convention not in LABEL_CONVENTIONS:
        raise UserError(f"unknown label convention {convention!r}; use brats2021 (ET=4) or brats2023 (ET=3)")
    return 4 if convention == "brats2021" else 3


def region_volumes(labels, label_schema: LabelSchema, convention: str = "brats2021") -> Dict[str, dict]:
    """Volumes in mL of each written label and of each predicted region (e.g. BraTS TC, WT)
    of a label map (a SimpleITK image)."""
    import SimpleITK as sitk

    from .geometry import voxel_volume_ml

    array = sitk.GetArrayViewFromImage(labels)
    ml = voxel_volume_ml(labels)
    result = {}
    for value, segment in label_schema.label_values(convention).items():
        result[segment.key] = {
            "name": segment.name,
            "label": value,
            "volume_ml": round(float(np.count_nonzero(array == value)) * ml, 3),
        }
    regions = label_schema.labels_to_regions(np.asarray(array), convention)
    for name, mask in zip(label_schema.channels, regions, strict=True):
        if name not in result:
            result[name] = {
                "name": REGION_NAMES.get(name, name),
                "volume_ml": round(float(np.count_nonzero(mask)) * ml, 3),
            }
    return result
