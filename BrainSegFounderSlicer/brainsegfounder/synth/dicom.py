"""Synthetic DICOM studies: a synthetic case's contrasts written as MR series with the headers
the scanner vendors write (series descriptions, sequence names, TR/TE/TI, contrast agent,
image type), plus the series a real study also holds (a localizer, a reformatted MPR, a
diffusion series), so that series identification (:mod:`brainsegfounder.dicom_study`) is
tested on what it will meet.

The header values are typical of each vendor's brain protocols (descriptions as their
default protocol trees name them); the voxels are the synthetic case's.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import SimpleITK as sitk

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

# vendor -> (Manufacturer, model, {series kind: header values}). Kinds: the four contrasts, then
# series a study also holds that must not be chosen.
_ORIGINAL = "ORIGINAL\\PRIMARY\\M\\NORM\\DIS2D"
VENDORS: Dict[str, tuple] = {
    "siemens": (
        "SIEMENS",
        "Skyra",
        {
            "flair": dict(
                description="t2_tirm_tra_dark-fluid",
                sequence="*tir2d1_15",
                scanning="SE\\IR",
                variant="SK\\SP\\MP",
                tr=9000.0,
                te=81.0,
                ti=2500.0,
            ),
            "t1": dict(
                description="t1_mprage_sag_p2_iso",
                sequence="*tfl3d1_16ns",
                scanning="GR\\IR",
                variant="SK\\SP\\MP",
                tr=2300.0,
                te=2.98,
                ti=900.0,
                three_d=True,
            ),
            "t2": dict(
                description="t2_tse_tra_512",
                sequence="*tse2d1_15",
                scanning="SE",
                variant="SK\\SP\\OSP",
                tr=5000.0,
                te=98.0,
            ),
            "localizer": dict(
                description="AAHead_Scout_32ch-head-coil",
                sequence="*fl2d1",
                scanning="GR",
                tr=8.6,
                te=4.0,
                slices=3,
            ),
            "mpr": dict(
                description="t1_mprage_sag_p2_iso_MPR_tra",
                sequence="*tfl3d1_16ns",
                scanning="GR\\IR",
                tr=2300.0,
                te=2.98,
                ti=900.0,
                image_type="DERIVED\\SECONDARY\\MPR\\NORM\\DIS3D",
            ),
            "dwi": dict(
                description="ep2d_diff_3scan_trace_p2", sequence="*ep_b1000t", scanning="EP", tr=5300.0, te=91.0
            ),
        },
    ),
    "ge": (
        "GE MEDICAL SYSTEMS",
        "DISCOVERY MR750",
        {
            "flair": dict(
                description="Ax T2 FLAIR",
                sequence="",
                scanning="SE\\IR",
                variant="SK\\OSP",
                tr=9000.0,
                te=120.0,
                ti=2250.0,
            ),
            "t1": dict(
                description="Sag 3D T1 BRAVO",
                sequence="efgre3d",
                scanning="GR\\IR",
                variant="SS\\SK",
                tr=8.2,
                te=3.2,
                ti=450.0,
                three_d=True,
            ),
            "t2": dict(description="Ax T2 FSE", sequence="", scanning="SE", variant="SK\\OSP", tr=4500.0, te=102.0),
            "localizer": dict(
                description="3-Plane Loc",
                sequence="",
                scanning="GR",
                tr=4.9,
                te=1.5,
                slices=3,
                image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
            ),
            "mpr": dict(
                description="Reformatted",
                sequence="efgre3d",
                scanning="GR\\IR",
                tr=8.2,
                te=3.2,
                image_type="DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE",
            ),
            "dwi": dict(description="Ax DWI", sequence="", scanning="EP", tr=6000.0, te=75.0),
        },
    ),
    "philips": (
        "Philips Medical Systems",
        "Ingenia",
        {
            "flair": dict(
                description="T2W_FLAIR_SENSE",
                sequence="",
                scanning="IR",
                variant="SK",
                tr=11000.0,
                te=125.0,
                ti=2800.0,
                image_type="ORIGINAL\\PRIMARY\\M_IR\\M\\IR",
            ),
            "t1": dict(
                description="T1W_3D_TFE",
                sequence="",
                scanning="GR",
                variant="SK",
                tr=8.1,
                te=3.7,
                three_d=True,
                image_type="ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE",
            ),
            "t2": dict(
                description="T2W_TSE",
                sequence="",
                scanning="SE",
                variant="SK",
                tr=3000.0,
                te=80.0,
                image_type="ORIGINAL\\PRIMARY\\M_SE\\M\\SE",
            ),
            "localizer": dict(
                description="Survey_SHC",
                sequence="",
                scanning="GR",
                tr=11.0,
                te=4.6,
                slices=3,
                image_type="ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE",
            ),
            "mpr": dict(
                description="T1W_3D_TFE MPR",
                sequence="",
                scanning="GR",
                tr=8.1,
                te=3.7,
                image_type="DERIVED\\SECONDARY\\MPR",
            ),
            "dwi": dict(description="DWI_SENSE", sequence="", scanning="SE", tr=3500.0, te=90.0, image_type=_ORIGINAL),
        },
    ),
}

# The post-contrast T1 is the vendor's T1 protocol repeated after the injection: its own description and the
# contrast agent tag (what the study reader keys on) are what differ.
POST_CONTRAST = {
    "siemens": ("t1_mprage_sag_p2_iso_KM", "Gadovist"),
    "ge": ("Ax 3D T1 BRAVO +C", "10 ML GADAVIST"),
    "philips": ("T1W_3D_TFE +Gd", "Gadoterate"),
}
for _vendor, (_description, _agent) in POST_CONTRAST.items():
    VENDORS[_vendor][2]["t1ce"] = {**VENDORS[_vendor][2]["t1"], "description": _description, "contrast": _agent}


def _uid(root: str, *parts: int) -> str:
    return ".".join([root, *(str(p) for p in parts)])[:64]


def write_series(
    image: sitk.Image,
    folder: os.PathLike,
    headers: Mapping[str, object],
    *,
    study: Mapping[str, str],
    series_number: int,
    manufacturer: str = "SIEMENS",
    model: str = "Skyra",
    body_part: str = "HEAD",
) -> str:
    """Write ``image`` as one MR series, one int16 file per slice along its third axis, with
    ``headers`` (description, sequence, scanning, variant, tr, te, ti, contrast, image_type,
    three_d, slices: keep only that many middle slices); returns the SeriesInstanceUID."""
    from pydicom.dataset import FileDataset, FileMetaDataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slices = headers.get("slices")
    if slices:
        middle = image.GetDepth() // 2
        first = max(0, middle - int(slices) // 2)
        image = image[:, :, first : first + int(slices)]
    array = np.round(sitk.GetArrayFromImage(image)).clip(-32768, 32767).astype(np.int16)  # (k, row, col)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    series_uid = _uid(study["uid"], series_number)
    now = _dt.datetime(2026, 1, 15, 9, 30)
    for k in range(array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _uid(series_uid, k + 1)
        meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
        ds = FileDataset(str(folder / f"IM{k + 1:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "MR"
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model
        ds.PatientName = study.get("patient_name", "Synthetic^Patient")
        ds.PatientID = study.get("patient_id", "SYNTH0001")
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study["uid"]
        ds.StudyID = "1"
        ds.AccessionNumber = "A0001"
        ds.ReferringPhysicianName = ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.SeriesTime = ds.ContentTime = (now + _dt.timedelta(minutes=series_number)).strftime("%H%M%S")
        ds.StudyDescription = study.get("description", "MRI BRAIN")
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = study["frame_of_reference"]
        ds.PositionReferenceIndicator = ""
        ds.SeriesDescription = str(headers.get("description", ""))
        ds.ProtocolName = str(headers.get("protocol", headers.get("description", "")))
        ds.BodyPartExamined = body_part
        ds.ImageType = str(headers.get("image_type", _ORIGINAL)).split("\\")
        ds.ScanningSequence = str(headers.get("scanning", "SE")).split("\\")
        ds.SequenceVariant = str(headers.get("variant", "NONE")).split("\\")
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D" if headers.get("three_d") else "2D"
        if headers.get("sequence"):
            ds.SequenceName = str(headers["sequence"])
        ds.RepetitionTime = f"{float(headers.get('tr', 500.0)):g}"
        ds.EchoTime = f"{float(headers.get('te', 10.0)):g}"
        if headers.get("ti"):
            ds.InversionTime = f"{float(headers['ti']):g}"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "3"
        if headers.get("contrast"):
            ds.ContrastBolusAgent = str(headers["contrast"])
            ds.ContrastBolusRoute = "IV"
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.SpacingBetweenSlices = f"{spacing[2]:g}"
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]  # row spacing, column spacing
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{float(np.dot(position, direction[:, 2])):.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape[1:]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(array[k]).tobytes()
        ds.save_as(folder / f"IM{k + 1:04d}", enforce_file_format=True)
    return series_uid


def write_study(
    images: Mapping[str, sitk.Image],
    folder: os.PathLike,
    vendor: str = "siemens",
    *,
    extras: tuple = ("localizer", "mpr", "dwi"),
    overrides: Optional[Mapping[str, Mapping[str, object]]] = None,
    body_part: str = "HEAD",
    seed: int = 0,
    flat: bool = False,
) -> Dict[str, str]:
    """Write a case's contrasts (``{modality: image}``) and the ``extras`` (kinds, or ``(kind,
    image)`` pairs) as one study in the ``vendor``'s spelling, series numbered in that order, one
    subfolder per series (or all files in ``folder`` with ``flat``).
    ``overrides`` changes header values per kind (e.g. ``{"t1": {"description": "..."}}``).
    Returns ``{kind: SeriesInstanceUID}``."""
    manufacturer, model, protocol = VENDORS[vendor]
    study = {"uid": _uid("1.2.826.0.1.3680043.10.1402", seed + 1), "frame_of_reference": ""}
    study["frame_of_reference"] = _uid(study["uid"], 999)
    reference = next(iter(images.values()))
    kinds = [*images, *extras]
    written = {}
    for number, item in enumerate(kinds, start=1):
        kind, image = item if isinstance(item, tuple) else (item, images.get(item, reference))
        headers = {**protocol[kind], **((overrides or {}).get(kind, {}))}
        subfolder = Path(folder) if flat else Path(folder) / f"S{number:03d}"
        if flat:  # one folder: file names must not collide across series
            subfolder = Path(folder) / f"tmp_{number}"
        uid = write_series(
            image,
            subfolder,
            headers,
            study=study,
            series_number=number,
            manufacturer=manufacturer,
            model=model,
            body_part=body_part,
        )
        if flat:
            for path in sorted(subfolder.iterdir()):
                path.rename(Path(folder) / f"S{number:03d}_{path.name}")
            subfolder.rmdir()
        written[kind] = uid
    return written
