"""Reading and checking input images.

Inputs are files SimpleITK reads (NIfTI, NRRD, MHA, ...) or folders holding one DICOM series.
Each is checked to be a finite, non-empty, scalar 3D volume, with one clear error if not.
Headers are checked before any voxel is read (:func:`check_image`, cheap and without torch), so
a damaged or absurd file costs no memory: its claimed size against a maximum and against the
bytes on disk, a DICOM series' slice positions against gaps, repeats and uneven spacing.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .atomic import disk_full
from .errors import UserError
from .paths import check_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img")
# A volume thinner than this along any axis is a slice or a stack of a few, not a 3D scan.
MIN_SLICES = 4
# 2**28 voxels (645^3): the finest clinical 3D MRI (0.5 mm isotropic over a whole head, 512^3 =
# 2**27) fits twice over, while one float32 copy is already 1 GiB and a run holds several (native,
# float32, resampled, the network's channels, probabilities). A larger claim is a damaged header
# or not one MRI volume; refusing it from the header costs nothing.
MAX_VOXELS = 2**28
# A DICOM slice may sit off its even place by a tenth of the spacing (positions rounded by an
# exporter); more is a lost, repeated or re-acquired slice, which ITK would stack as if even.
SLICE_STEP_RTOL = 0.1


@contextmanager
def quiet_itk():
    """ITK's raw warnings (e.g. "Non uniform sampling or missing slices") off while reading:
    what they say is checked here and said in one line instead."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@contextmanager
def _c_stderr_kept_quiet():
    """Lines C libraries print to the process's stderr themselves (the NIfTI library's "NWAD"
    on a full disk) kept off the terminal: the failure is checked and said in one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def write_image(image: sitk.Image, path: os.PathLike) -> None:
    """``sitk.WriteImage`` (compressed), then the file read back from its header: ITK's NIfTI
    writer reports a full disk only on stderr and leaves a short file (measured on a 16 kB
    tmpfs), so a short file raises the OSError a full disk gives elsewhere."""
    path = Path(path)
    with _c_stderr_kept_quiet():
        sitk.WriteImage(image, str(path), useCompression=True)
    try:
        check_image(path, "written image")
    except UserError:
        if disk_full(RuntimeError(), path):
            raise OSError(errno.ENOSPC, "No space left on device (the file was written short)", str(path)) from None
        raise OSError(errno.EIO, "the file reads back short", str(path)) from None


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_nonfinite(path: Path) -> int:
    """SimpleITK silently reads NaN/inf voxels of NIfTI files as 0, so look with nibabel."""
    import nibabel as nib

    image = nib.load(str(path))
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))


def _check_shape(path, label: str, size: Tuple[int, ...], components: int) -> None:
    """Voxel count, components, dimension and thickness, from a header alone."""
    voxels = math.prod(size) * max(components, 1)
    if voxels > MAX_VOXELS:
        raise UserError(
            f"{label}: {path} claims {'x'.join(map(str, size))} = {voxels} voxels, more than the "
            f"{MAX_VOXELS} (2**28) a brain MRI volume may have; its header is damaged or it is not one "
            "MRI volume: give the 3D scan (resample a finer one to 0.5 mm)"
        )
    if components != 1:
        raise UserError(
            f"{label}: {path} has {components} components per voxel "
            "(a vector, RGB or 4D-as-vector image); give one 3D scalar volume per modality"
        )
    if len(size) != 3:
        raise UserError(
            f"{label}: {path} is {len(size)}D; give a 3D volume (split a 4D series into one file per modality)"
        )
    if min(size) < MIN_SLICES:
        raise UserError(
            f"{label}: {path} is {'x'.join(map(str, size))} voxels, a 2D slice rather "
            "than a 3D volume; give the whole 3D scan"
        )


def _itk_message(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[-1] if lines else "unknown error"
    return first.removeprefix("sitk::ERROR: ")[:120]


def _file_info(path: Path, label: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserError(
            f"{label}: cannot read {path} as an image ({_itk_message(error)}); "
            "give a NIfTI, NRRD or MHA file or a DICOM series folder"
        ) from None
    return reader


def _component_bytes(reader: sitk.ImageFileReader) -> Optional[int]:
    try:
        return sitk.Image([1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:  # a pixel type with no plain image (labels): no size check
        return None


def _gzip_short(path: Path, start: int, expected: int) -> int:
    """Bytes missing from a gzip stream that starts at ``start`` and ends the file (0 if whole).
    The trailer holds the uncompressed size, so the usual check costs 4 bytes; only when it
    disagrees (a truncated file, or a multi-member gzip as bgzip writes) are the bytes counted,
    in bounded memory and never past ``expected``."""
    with path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return 0
        f.seek(start)
        size, inflater, data = 0, zlib.decompressobj(wbits=31), b""
        try:
            while size < expected:
                data = data or f.read(1 << 16)
                if not data:  # the file ends: inside a member means cut short
                    return max(0 if inflater.eof else 1, expected - size)
                size += len(inflater.decompress(data, 1 << 20))
                data = inflater.unconsumed_tail
                if inflater.eof:  # a member ends; another may follow
                    data = inflater.unused_data
                    if data or (data := f.read(1 << 16)):
                        inflater = zlib.decompressobj(wbits=31)
                    else:
                        break
        except zlib.error:
            return max(1, expected - size)
    return max(0, expected - size)


def _nifti_payload_short(path: Path, label: str) -> int:
    """Bytes missing from a NIfTI file's voxel data (0 if complete). SimpleITK reads a file cut
    short (a copy interrupted, then re-compressed) without a word, leaving part of the volume
    undefined."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as error:  # nibabel's errors have no common base; any is an unreadable file
        raise UserError(f"{label}: cannot read {path} as NIfTI ({str(error)[:120]}); copy or export it again") from None
    offset = int(header.get_data_offset())
    if bytes(header["magic"]).rstrip(b"\0") in (
        b"n+1",
        b"n+2",
    ):  # one file: voxels follow the header even where it says 0
        offset = max(offset, header.single_vox_offset + int(header.extensions.get_sizeondisk()))
    expected = offset + math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):
        return max(0, expected - path.stat().st_size)
    return _gzip_short(path, 0, expected)


def _text_header(path: Path, end) -> Tuple[dict, int]:
    """Fields of a MetaImage (``Key = Value``) or NRRD (``key: value``) text header and its length
    in bytes; ``end(key, line)`` says whether a line is the last one of the header."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    fields, offset = {}, 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        sep = "=" if path.suffix.lower() in (".mha", ".mhd") else ":"
        key, found, value = line.partition(sep)
        if found and not value.startswith("="):  # NRRD's key:=value pairs are free text
            fields[key.strip().lower()] = value.strip()
        if end(key.strip().lower(), line):
            return fields, offset
    return fields, -1


def _payload_short(path: Path, label: str, expected_raw: int) -> int:
    """Bytes missing from an MHA/MHD or NRRD/NHDR file's voxel data; 0 where it cannot tell
    cheaply (data in several files, skipped lines, encodings other than raw and gzip)."""
    meta = path.suffix.lower() in (".mha", ".mhd")
    if meta:
        fields, offset = _text_header(path, lambda key, _line: key == "elementdatafile")
        name, skip = fields.get("elementdatafile", ""), int(fields.get("headersize", "0") or 0)
        compressed = fields.get("compresseddata", "false").lower() == "true"
        encoding = "zlib" if compressed else "raw"
        expected = int(fields.get("compresseddatasize", "0") or 0) if compressed else expected_raw
    else:
        fields, offset = _text_header(path, lambda _key, line: line == "")
        name = fields.get("data file", fields.get("datafile", "LOCAL"))
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
        encoding = {"gz": "gzip", "raw": "raw"}.get(fields.get("encoding", ""), fields.get("encoding", ""))
        expected = expected_raw
        if int(fields.get("line skip", fields.get("lineskip", "0")) or 0):
            return 0
    if offset < 0 or skip < 0 or not expected or encoding not in ("raw", "gzip", "zlib"):
        return 0
    if name.upper() == "LOCAL":
        data, start = path, offset + skip
    elif " " in name or "%" in name or name.upper().startswith("LIST"):
        return 0
    else:
        data, start = path.parent / name, skip
        if not data.is_file():
            raise UserError(
                f"{label}: the voxel data file {data.name} that {path} names does not exist; "
                "keep it beside the header, or export the image as one file"
            )
    if encoding == "gzip":
        return _gzip_short(data, start, expected)
    return max(0, start + expected - data.stat().st_size)


def _check_file(path: Path, label: str) -> Tuple[int, ...]:
    reader = _file_info(path, label)
    size = tuple(reader.GetSize())
    _check_shape(path, label, size, reader.GetNumberOfComponents())
    if _is_nifti(path):
        missing = _nifti_payload_short(path, label)
    elif path.suffix.lower() in (".mha", ".mhd", ".nrrd", ".nhdr") and (itemsize := _component_bytes(reader)):
        try:
            missing = _payload_short(path, label, math.prod(size) * itemsize)
        except ValueError:  # a header field ITK ignores but is no number: no size check, ITK reads
            missing = 0
    else:
        missing = 0
    if missing:
        raise UserError(
            f"{label}: {path} is truncated ({missing} bytes of voxel data missing); copy or download it again"
        )
    return size


def _dicom_series_files(folder: Path, label: str) -> List[str]:
    entries = [entry for entry in os.scandir(folder) if entry.is_file()]
    locked = []
    for entry in entries:
        try:
            Path(entry.path).open("rb").close()
        except PermissionError:
            locked.append(entry.name)
    if locked:  # GDCM would skip them without a word: a series with holes
        raise UserError(
            f"{label}: permission denied reading {len(locked)} of the {len(entries)} files in {folder} "
            f"(e.g. {locked[0]}); make them readable for this user (e.g. chmod -R a+r)"
        )
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        if folder.name.lower().endswith(IMAGE_SUFFIXES):
            raise UserError(
                f"{label}: {folder} is a folder, not an image file, and holds no DICOM series; "
                "give the image file, or a DICOM series folder"
            )
        raise UserError(
            f"{label}: folder {folder} holds no DICOM series ({len(entries)} file(s), none DICOM); "
            "give an image file or a DICOM series folder"
        )
    if len(series) > 1:
        raise UserError(
            f"{label}: folder {folder} holds {len(series)} DICOM series; "
            "give the folder of one series (or export it as NIfTI/NRRD)"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _dicom_numbers(reader: sitk.ImageFileReader, tag: str, count: int) -> Optional[np.ndarray]:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        values = np.array([float(v) for v in reader.GetMetaData(tag).split("\\")])
    except ValueError:
        return None
    return values if values.size == count else None


def _check_dicom_series(folder: Path, files: List[str], label: str) -> Tuple[int, ...]:
    """Size from one header per file, and the slices evenly spaced along the slice normal with
    none missing or repeated: ITK would stack them as if even, misplacing every slice after a gap."""
    sizes, positions, orientations = [], [], []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise UserError(
                f"{label}: cannot read {Path(name).name} in {folder} ({_itk_message(error)}); re-export the series"
            ) from None
        sizes.append(tuple(reader.GetSize()))
        positions.append(_dicom_numbers(reader, "0020|0032", 3))
        orientations.append(_dicom_numbers(reader, "0020|0037", 6))
        components = reader.GetNumberOfComponents()
    if len(set(sizes)) > 1:
        raise UserError(
            f"{label}: the slices in {folder} differ in size ({sizes[0]} and others); give the folder of one series"
        )
    cols, rows = sizes[0][:2]
    depth = sum(s[2] if len(s) > 2 else 1 for s in sizes)
    size = (cols, rows, depth)
    _check_shape(folder, label, size, components)
    if len(files) < 2 or any(p is None for p in positions) or any(o is None for o in orientations):
        return size  # one multi-frame file, or no positions to check: ITK places them as it can
    if any(not np.allclose(o, orientations[0], atol=1e-4) for o in orientations):
        raise UserError(
            f"{label}: the slices in {folder} have different orientations; the folder mixes "
            "acquisitions: give the folder of one series"
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.array([p @ normal for p in positions])
    order = np.argsort(along, kind="stable")
    along, names = along[order], [Path(files[i]).name for i in order]
    steps = np.diff(along)
    spacing = float(np.median(steps))
    if spacing <= 0:
        raise UserError(
            f"{label}: the slices in {folder} all lie at one position; the folder holds repeated "
            "slices, not a 3D series: re-export the complete series"
        )
    ratio = steps / spacing
    nearest = np.rint(ratio)
    repeated = np.flatnonzero(ratio < SLICE_STEP_RTOL)
    if repeated.size:
        i = int(repeated[0])
        raise UserError(
            f"{label}: DICOM series {folder} has {repeated.size} repeated slice position(s), the first at "
            f"{along[i]:.2f} mm along the slice normal ({names[i]} and {names[i + 1]}); the folder holds "
            "a slice twice or two acquisitions: re-export the complete series alone"
        )
    gaps = np.flatnonzero((nearest >= 2) & (np.abs(ratio - nearest) <= SLICE_STEP_RTOL))
    if gaps.size:
        i = int(gaps[0])
        missing = int(sum(nearest[gaps] - 1))
        where = positions[order[i]] + normal * spacing
        raise UserError(
            f"{label}: DICOM series {folder} is missing {missing} of {len(files) + missing} slices, the first "
            f"at ({', '.join(f'{v:.1f}' for v in where)}) mm between {names[i]} and {names[i + 1]} "
            f"(slices {spacing:.2f} mm apart); re-export the complete series from the scanner or PACS"
        )
    uneven = np.flatnonzero(np.abs(ratio - 1) > SLICE_STEP_RTOL)
    if uneven.size:
        i = int(uneven[0])
        raise UserError(
            f"{label}: DICOM series {folder} has uneven slice spacing ({steps.min():.2f} to "
            f"{steps.max():.2f} mm; {steps[i]:.2f} mm between {names[i]} and {names[i + 1]}, "
            f"{spacing:.2f} mm elsewhere); re-export the series, or resample it to even spacing"
        )
    return size


def check_image(path: os.PathLike, label: str = "input") -> Tuple[int, ...]:
    """Check an input from its headers alone (no voxels read, no torch): the path, the format,
    the claimed size against :data:`MAX_VOXELS` and the bytes on disk, a DICOM series' slices.
    Returns the size; raises :class:`UserError` with one line otherwise."""
    files = getattr(path, "dicom_files", None)  # one series of a study (dicom_study.SeriesSource)
    path = Path(path)
    info = check_path(path, label, hint="give an image file or a DICOM series folder")
    with quiet_itk():
        if files:
            return _check_dicom_series(path, files, label)
        if stat.S_ISDIR(info.st_mode):
            return _check_dicom_series(path, _dicom_series_files(path, label), label)
        return _check_file(path, label)


def check_images(inputs: Iterable[Tuple[str, os.PathLike]]) -> None:
    """:func:`check_image` for each ``(modality, path)``: a bad input refused before any is read."""
    for name, path in inputs:
        check_image(path, f"input {name}")


def read_volume(path: os.PathLike, label: str = "input") -> sitk.Image:
    """Read and check one 3D scalar volume as float32; ``label`` names it in errors."""
    files = getattr(path, "dicom_files", None)  # one series of a study (dicom_study.SeriesSource)
    check_image(path, label)
    path = Path(path)
    with quiet_itk():
        try:
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(files or _dicom_series_files(path, label))
                image = reader.Execute()
            else:
                image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            # the header was fine, so this is the data: ITK may say "No such file or directory"
            raise UserError(
                f"{label}: cannot read the voxels of {path} ({_itk_message(error)}); the file is damaged "
                "or truncated: copy or export it again"
            ) from None
    # the header said so already; a reader that disagrees with its own header is caught here
    _check_shape(path, label, tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel())
    nonfinite = _nifti_nonfinite(path) if path.is_file() and _is_nifti(path) else 0
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    nonfinite += int(np.count_nonzero(~np.isfinite(array)))
    if nonfinite:
        raise UserError(f"{label}: {path} has {nonfinite} NaN/inf voxels; fix or mask them before segmenting")
    if not np.any(array):
        raise UserError(f"{label}: {path} is empty (all voxels are zero); check that the right file was given")
    return image
