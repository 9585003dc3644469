"""Reading and checking input images.

Inputs are files SimpleITK reads (NIfTI, NRRD, MHA, ...) or folders holding one DICOM series.
Each is checked to be a finite, non-empty, scalar 3D volume, with one clear error if not.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# A volume thinner than this along any axis is a slice or a stack of a few, not a 3D scan.
MIN_SLICES = 4


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _read_dicom_series(folder: Path, label: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"{label}: folder {folder} holds no DICOM series; give an image file or a DICOM series folder")
    if len(series) > 1:
        raise UserError(
            f"{label}: folder {folder} holds {len(series)} DICOM series; "
            "give the folder of one series (or export it as NIfTI/NRRD)"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    return reader.Execute()


def _nifti_nonfinite(path: Path) -> int:
    """SimpleITK silently reads NaN/inf voxels of NIfTI files as 0, so look with nibabel."""
    import nibabel as nib

    image = nib.load(str(path))
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))


def _nifti_payload_short(path: Path) -> int:
    """Bytes missing from a NIfTI file's voxel data (0 if complete). SimpleITK reads a file cut
    short (a copy interrupted, then re-compressed) without a word, leaving part of the volume
    undefined. The gzip trailer holds the uncompressed size, so the usual check costs 4 bytes;
    only when it disagrees (a truncated file, or a multi-member gzip as bgzip writes) are the
    bytes counted."""
    import nibabel as nib

    header = nib.load(str(path)).header
    expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):
        return max(0, expected - path.stat().st_size)
    with path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return 0
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                size += len(chunk)
    except (EOFError, OSError, zlib.error):
        return max(1, expected - size)
    return max(0, expected - size)


def read_volume(path: os.PathLike, label: str = "input") -> sitk.Image:
    """Read and check one 3D scalar volume as float32; ``label`` names it in errors."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{label}: {path} does not exist; check the path")
    try:
        image = _read_dicom_series(path, label) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise UserError(
            f"{label}: cannot read {path} as an image ({first[:120]}); "
            "give a NIfTI, NRRD or MHA file or a DICOM series folder"
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(
            f"{label}: {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(a vector, RGB or 4D-as-vector image); give one 3D scalar volume per modality"
        )
    if image.GetDimension() != 3:
        raise UserError(
            f"{label}: {path} is {image.GetDimension()}D; give a 3D volume "
            "(split a 4D series into one file per modality)"
        )
    if min(image.GetSize()) < MIN_SLICES:
        raise UserError(
            f"{label}: {path} is {'x'.join(map(str, image.GetSize()))} voxels, a 2D slice rather "
            "than a 3D volume; give the whole 3D scan"
        )
    if path.is_file() and _is_nifti(path):
        missing = _nifti_payload_short(path)
        if missing:
            raise UserError(
                f"{label}: {path} is truncated ({missing} bytes of voxel data missing); copy or download it again"
            )
    nonfinite = _nifti_nonfinite(path) if path.is_file() and _is_nifti(path) else 0
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    nonfinite += int(np.count_nonzero(~np.isfinite(array)))
    if nonfinite:
        raise UserError(f"{label}: {path} has {nonfinite} NaN/inf voxels; fix or mask them before segmenting")
    if not np.any(array):
        raise UserError(f"{label}: {path} is empty (all voxels are zero); check that the right file was given")
    return image
