"""The MONAI data pipeline: cases read exactly as the engine reads them at inference, then
BrainSegFounder's augmentation.

Reading goes through the engine (physical-space resampling onto the first input, the
network's orientation, the brain box, z-score over the brain), so training and ``segment``
see identical arrays. The deterministic part is what caching keeps (in memory or on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from monai.transforms import MapTransform

from brainsegfounder.errors import UserError
from brainsegfounder.geometry import reorient, same_grid
from brainsegfounder.labels import LabelSchema

from ..harness.data import files_key, read_network_volume
from .datasets import Case


class LoadCase(MapTransform):
    """``{"case": Case}`` -> ``{"image": (C,i,j,k) float32, "label": (R,i,j,k) uint8, ...}``."""

    def __init__(self, schema: LabelSchema, orientation: str, crop_to_brain: bool = True):
        super().__init__(keys=["case"])
        self.schema = schema
        self.orientation = orientation
        self.crop_to_brain = crop_to_brain

    def __call__(self, data):
        case: Case = data["case"]
        volume, box, reference = read_network_volume(case.images, self.orientation, self.crop_to_brain)
        label = sitk.ReadImage(case.label)
        if not same_grid(label, reference):
            raise UserError(f"case {case.case_id}: the label is not on the grid of its first image")
        labels = sitk.GetArrayFromImage(reorient(label, self.orientation)).transpose(2, 1, 0)
        regions = self.schema.labels_to_regions(labels, case.convention).astype(np.uint8)
        return {
            "image": volume,
            "label": box.crop(regions),
            "case_id": case.case_id,
            "spacing": np.asarray(reference.GetSpacing(), dtype=np.float64),
        }


def case_key(item) -> bytes:
    """Disk-cache key of a case: its files, their modification times and its label convention."""
    case: Case = item["case"]
    return files_key([*case.image_list(), case.label], salt=case.convention)


def train_transforms(schema: LabelSchema, orientation: str, roi: Sequence[int], recipe: dict):
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    roi = tuple(roi)
    aug, train = recipe["augment"], recipe["train"]
    keys = ["image", "label"]
    if train["crop"] == "posneg":
        pos = float(train["pos_fraction"])
        crop = RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=roi,
            pos=pos,
            neg=1 - pos,
            num_samples=1,
            image_key="image",
            image_threshold=0,
            allow_smaller=True,
        )
    else:
        crop = RandSpatialCropd(keys, roi_size=roi, random_size=False)
    steps = [LoadCase(schema, orientation), SpatialPadd(keys, spatial_size=roi), crop]
    if aug["flip"]:
        steps += [RandFlipd(keys, prob=float(aug["flip"]), spatial_axis=axis) for axis in range(3)]
    if aug["intensity_scale"]:
        steps.append(RandScaleIntensityd("image", factors=float(aug["intensity_scale"]), prob=1.0))
    if aug["intensity_shift"]:
        steps.append(RandShiftIntensityd("image", offsets=float(aug["intensity_shift"]), prob=1.0))
    steps.append(EnsureTyped(keys, dtype=None, track_meta=False))
    return Compose(steps)


def val_transforms(schema: LabelSchema, orientation: str):
    from monai.transforms import Compose, EnsureTyped

    return Compose([LoadCase(schema, orientation), EnsureTyped(["image", "label"], track_meta=False)])


def make_dataset(cases: Sequence[Case], transform, cache: str, cache_dir: Optional[Path], workers: int):
    """A MONAI data set over ``cases``: no cache, in memory, or persistent on disk."""
    from monai.data import CacheDataset, Dataset, PersistentDataset

    items = [{"case": c} for c in cases]
    if cache == "memory":
        return CacheDataset(items, transform, cache_rate=1.0, num_workers=max(1, workers), progress=False)
    if cache == "disk":
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir, hash_transform=None, hash_func=case_key)
    return Dataset(items, transform)
