"""The template anatomy: tissue probability maps in MNI152 2009a space (1 mm, RAS)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import UserError


@dataclass(frozen=True)
class Template:
    gm: sitk.Image
    wm: sitk.Image
    csf: sitk.Image
    mask: sitk.Image
    t1: sitk.Image

    def brain_center(self) -> np.ndarray:
        """Physical centre (LPS mm) of the brain mask's bounding box."""
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast(self.mask > 0.5, sitk.sitkUInt8))
        x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
        corner_a = self.mask.TransformContinuousIndexToPhysicalPoint((x0, y0, z0))
        corner_b = self.mask.TransformContinuousIndexToPhysicalPoint((x0 + sx - 1, y0 + sy - 1, z0 + sz - 1))
        return (np.array(corner_a) + np.array(corner_b)) / 2


def _to_sitk(nifti) -> sitk.Image:
    """nibabel image -> SimpleITK float image with the same physical placement (RAS -> LPS)."""
    data = np.asanyarray(nifti.get_fdata(dtype=np.float32))
    affine = nifti.affine
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    flip = np.diag([-1.0, -1.0, 1.0])  # nibabel's RAS world -> ITK's LPS world
    rotation_zoom = flip @ affine[:3, :3]
    spacing = np.linalg.norm(rotation_zoom, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (rotation_zoom / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in flip @ affine[:3, 3]))
    return image


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The MNI152 maps shipped inside nilearn (no download)."""
    try:
        from nilearn import datasets
    except ImportError:
        raise UserError("synthetic data needs nilearn: pip install nilearn") from None
    t1 = _to_sitk(datasets.load_mni152_template(resolution=1))
    gm = _to_sitk(datasets.load_mni152_gm_template(resolution=1))
    wm = _to_sitk(datasets.load_mni152_wm_template(resolution=1))
    mask = _to_sitk(datasets.load_mni152_brain_mask(resolution=1))
    gm_a, wm_a, mask_a = (sitk.GetArrayFromImage(im) for im in (gm, wm, mask))
    mask_a = ((mask_a > 0.5) | (sitk.GetArrayFromImage(t1) > 0)).astype(np.float32)
    total = gm_a + wm_a
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1.0)  # keep GM + WM <= 1
    gm_a, wm_a = gm_a * scale * mask_a, wm_a * scale * mask_a
    csf_a = np.clip(mask_a - gm_a - wm_a, 0, 1)  # CSF = brain mask - GM - WM

    def like(array):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(t1)
        return image

    return Template(gm=like(gm_a), wm=like(wm_a), csf=like(csf_a), mask=like(mask_a), t1=t1)
