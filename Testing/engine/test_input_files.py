"""Input files read safely and honestly: a bad header costs no memory, a damaged file says so,
a DICOM series with a lost, repeated or uneven slice is refused, and an input that covers part
of the brain is refused or noted."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from brainsegfounder.errors import UserError
from brainsegfounder.geometry import MIN_COVERAGE, WARN_COVERAGE, coverage
from brainsegfounder.imageio import MAX_VOXELS, read_volume

from helpers import ROOT, measured, run_cli, segment_args, write_dicom_series

ENGINE = str(ROOT / "BrainSegFounderSlicer")


def refused(path, pattern):
    with pytest.raises(UserError, match=pattern) as caught:
        read_volume(path, "input flair")
    message = str(caught.value)
    assert "\n" not in message
    return message


def nifti_header_only(path: Path, shape) -> Path:
    """A NIfTI header that claims ``shape`` float32 voxels, and no voxels (384 bytes)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    path.write_bytes(header.binaryblock + b"\0" * 36)
    return path


def cut(path: Path, dest: Path, fraction=0.5) -> Path:
    data = path.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


@pytest.fixture
def flair(brats_inputs):
    return sitk.ReadImage(brats_inputs[0][0][1])


# -- headers: refused before any voxel is allocated ---------------------------------------------


@pytest.mark.parametrize("side", [1000, 30000])
def test_header_claiming_too_many_voxels(tmp_path, side):
    path = nifti_header_only(tmp_path / "huge.nii", (side,) * 3)
    message = refused(path, rf"claims {side}x{side}x{side} = \d+ voxels, more than the {MAX_VOXELS}")
    assert "allocate" not in message


def test_header_within_the_limit_but_no_voxels_is_truncated(tmp_path):
    path = nifti_header_only(tmp_path / "short.nii", (400, 400, 400))
    refused(path, r"is truncated \(\d+ bytes of voxel data missing\)")


def test_nrrd_header_claiming_too_many_voxels(tmp_path):
    path = tmp_path / "huge.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 2000 2000 2000\nendian: little\nencoding: raw\n\n")
    refused(path, r"claims 2000x2000x2000 = 8000000000 voxels")


@pytest.mark.parametrize(
    ("name", "compressed"),
    [("image.mha", False), ("image.mha", True), ("image.nrrd", False), ("image.nrrd", True)],
)
def test_truncated_mha_and_nrrd(tmp_path, flair, name, compressed):
    """ITK said "No such file or directory" for a truncated MHA that exists."""
    whole = tmp_path / name
    sitk.WriteImage(flair, str(whole), useCompression=compressed)
    assert read_volume(whole).GetSize() == flair.GetSize()
    message = refused(cut(whole, tmp_path / f"cut_{name}", 2 / 3), r"is truncated \(\d+ bytes of voxel data missing\)")
    assert "No such file" not in message


def test_mhd_with_short_or_missing_raw_file(tmp_path, flair):
    sitk.WriteImage(flair, str(tmp_path / "image.mhd"))
    raw = tmp_path / "image.raw"
    cut(raw, raw)
    refused(tmp_path / "image.mhd", r"is truncated \(\d+ bytes")
    raw.unlink()
    refused(tmp_path / "image.mhd", r"voxel data file image\.raw that .*image\.mhd names does not exist")


def test_gzip_nifti_cut_and_recompressed_counts_what_is_missing(tmp_path, brats_inputs):
    data = gzip.decompress(Path(brats_inputs[0][0][1]).read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) - 100_000]))
    refused(tmp_path / "cut.nii.gz", r"truncated \(100000 bytes of voxel data missing\)")


# -- paths ---------------------------------------------------------------------------------------


def test_path_faults_each_one_line(tmp_path):
    (tmp_path / "loop.nii.gz").symlink_to("loop.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to("gone.nii.gz")
    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.nii.gz")  # opening it would block forever
    (tmp_path / "afile").write_text("x")
    refused(tmp_path / "loop.nii.gz", r"is a loop of symbolic links")
    refused(tmp_path / "dangling.nii.gz", r"is a symbolic link to gone\.nii\.gz, which does not exist")
    refused(tmp_path / "folder.nii.gz", r"is a folder, not an image file, and holds no DICOM series")
    refused(tmp_path / "notes", r"holds no DICOM series \(1 file\(s\), none DICOM\)")
    refused(tmp_path / "empty.nii.gz", r"is empty \(0 bytes\)")
    refused(tmp_path / "pipe.nii.gz", r"is not a regular file")
    refused(tmp_path / "afile" / "x.nii.gz", r"runs through a file as if it were a folder")


def test_no_read_permission(tmp_path, brats_inputs, flair):
    """Root reads everything; drop the capabilities that let it (as the fault table does)."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root without DAC override needs setpriv")
    locked = tmp_path / "locked.nii.gz"
    shutil.copy(brats_inputs[0][0][1], locked)
    locked.chmod(0)
    series = tmp_path / "series"
    write_dicom_series(flair, series)
    (series / "slice0010.dcm").chmod(0)  # GDCM would skip it: a series with a hole
    code = (
        "import sys; from brainsegfounder.imageio import check_image; from brainsegfounder.errors import UserError\n"
        "for p in sys.argv[1:]:\n"
        "    try: check_image(p, 'input flair'); print('accepted', p)\n"
        "    except UserError as e: print(e)\n"
    )
    command = [sys.executable, "-c", code, str(locked), str(series)]
    if os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ENGINE})
    lines = result.stdout.splitlines()
    assert result.stderr == "", result.stderr
    assert (
        lines[0] == f"input flair: permission denied reading {locked}; make it readable for this user (e.g. chmod a+r)"
    )
    assert lines[1].startswith(f"input flair: permission denied reading 1 of the 52 files in {series} (e.g. slice0010")


# -- DICOM series --------------------------------------------------------------------------------


def rewrite_slice(source: Path, dest: Path, **tags):
    image = sitk.ReadImage(str(source))
    for tag, value in tags.items():
        image.SetMetaData(tag.replace("_", "|"), value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(dest))
    writer.Execute(image)


def moved(path: Path, dz: float) -> dict:
    x, y, z = map(float, sitk.ReadImage(str(path)).GetMetaData("0020|0032").split("\\"))
    return {"0020_0032": f"{x}\\{y}\\{z + dz}"}


def test_dicom_series_with_a_missing_slice(tmp_path, flair, capfd):
    """Before: ITK read 51 slices stacked as if 3.06 mm apart, with only its raw warning."""
    series = tmp_path / "series"
    write_dicom_series(flair, series)
    (series / "slice0010.dcm").unlink()
    z = flair.TransformIndexToPhysicalPoint((0, 0, 10))[2]
    refused(
        series,
        rf"DICOM series .*series is missing 1 of 52 slices, the first at \(-?\d+\.\d, -?\d+\.\d, {z:.1f}\) mm "
        r"between slice0009\.dcm and slice0011\.dcm \(slices 3\.00 mm apart\); re-export the complete series",
    )
    assert capfd.readouterr().err == ""


def test_dicom_series_with_uneven_or_repeated_slices(tmp_path, flair):
    uneven = tmp_path / "uneven"
    write_dicom_series(flair, uneven)
    rewrite_slice(uneven / "slice0010.dcm", uneven / "slice0010.dcm", **moved(uneven / "slice0010.dcm", 1.2))
    refused(uneven, r"uneven slice spacing \(1\.80 to 4\.20 mm; 4\.20 mm between slice0009\.dcm and slice0010\.dcm")
    repeated = tmp_path / "repeated"
    write_dicom_series(flair, repeated)
    rewrite_slice(repeated / "slice0010.dcm", repeated / "again.dcm", **{"0008_0018": "1.2.826.0.1.3680043.2.1125.9"})
    refused(repeated, r"1 repeated slice position\(s\), the first at .* \(again\.dcm and slice0010\.dcm\)")


def test_dicom_jitter_within_a_tenth_of_a_slice_is_read_quietly(tmp_path, flair, capfd):
    """Positions rounded by an exporter are fine; ITK's raw warning about them stays off the terminal."""
    series = tmp_path / "series"
    write_dicom_series(flair, series)
    rewrite_slice(series / "slice0010.dcm", series / "slice0010.dcm", **moved(series / "slice0010.dcm", 0.15))
    assert read_volume(series).GetSize() == flair.GetSize()
    assert capfd.readouterr().err == ""


def test_dicom_series_size_checked_from_one_slice_and_the_count(tmp_path, flair, monkeypatch):
    series = tmp_path / "series"
    write_dicom_series(flair, series)
    monkeypatch.setattr("brainsegfounder.imageio.MAX_VOXELS", 80 * 80 * 51)
    refused(series, r"claims 80x80x52 = 332800 voxels")


# -- coverage ------------------------------------------------------------------------------------


def shifted(image: sitk.Image, fraction: float) -> sitk.Image:
    """``image`` moved along z by ``fraction`` of its extent."""
    out = sitk.Image(image)
    extent = image.GetSize()[2] * image.GetSpacing()[2]
    out.SetOrigin(tuple(np.add(image.GetOrigin(), (0, 0, fraction * extent))))
    return out


def test_coverage_counts_the_brain_not_the_grid(brats_inputs):
    """A T2 moved 80% of its extent covered 20% of the grid (accepted, no note) but 5% of the brain."""
    reference = read_volume(brats_inputs[0][0][1])
    t2 = read_volume(brats_inputs[0][3][1])
    assert coverage(t2, reference) == 1.0
    assert coverage(shifted(t2, 0.8), reference) < 0.1
    assert coverage(shifted(t2, 0.3), reference) > 0.8


def test_partial_input_noted_or_refused(tmp_path, brats_inputs):
    from brainsegfounder.segment import load_inputs

    paths = dict(brats_inputs[0])
    t2 = read_volume(paths["t2"])
    sitk.WriteImage(shifted(t2, 0.3), str(tmp_path / "part.nii.gz"))
    sitk.WriteImage(shifted(t2, 0.8), str(tmp_path / "little.nii.gz"))
    _, resampled, notes = load_inputs(paths)
    assert notes == []
    assert not any(resampled.values())
    _, resampled, notes = load_inputs({**paths, "t2": str(tmp_path / "part.nii.gz")})
    assert resampled["t2"]
    assert len(notes) == 1
    assert notes[0].startswith("input t2 covers 8")
    assert notes[0].endswith("% of the reference flair's brain; the rest is segmented without it")
    with pytest.raises(UserError, match=rf"input t2 covers [0-9]% of the reference flair's brain .*{MIN_COVERAGE:.0%}"):
        load_inputs({**paths, "t2": str(tmp_path / "little.nii.gz")})
    assert MIN_COVERAGE < WARN_COVERAGE < 1


def test_partial_input_note_reaches_the_summary_and_console(tmp_path, capsys, brats_inputs, brats_model):
    inputs, _ = brats_inputs
    sitk.WriteImage(shifted(read_volume(inputs[3][1]), 0.3), str(tmp_path / "part.nii.gz"))
    inputs = [*inputs[:3], ("t2", str(tmp_path / "part.nii.gz"))]
    args = segment_args(brats_model, inputs, tmp_path / "out.nii.gz", "--summary", tmp_path / "s.json")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert any(n.startswith("input t2 covers 8") for n in summary["notes"]), summary["notes"]
    assert "note: input t2 covers 8" in out


# -- the real command: a rejected input costs no memory ------------------------------------------


def test_header_check_without_torch_is_cheap(tmp_path):
    """What the command pays for a bad header before it loads a model: no torch, little memory."""
    path = nifti_header_only(tmp_path / "huge.nii", (1000, 1000, 1000))
    code = "import sys; from brainsegfounder.imageio import check_image\ncheck_image(sys.argv[1], 'input flair')\n"
    env = {**os.environ, "PYTHONPATH": ENGINE}
    run = measured([sys.executable, "-c", code, path], env, tmp_path)
    assert run.returncode == 1
    assert "claims 1000x1000x1000" in run.stderr
    assert run.peak_mib < 300, run.peak_mib
    probe = "import sys, brainsegfounder.imageio; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout == "False\n"


@pytest.mark.slow
def test_cli_rejects_a_huge_header_before_the_model_loads(tmp_path, brats_inputs, brats_model):
    """Before: a 384-byte NIfTI claiming 1000^3 voxels made ``segment`` allocate 4.5 GB (13 s).
    Now every header is checked before torch is imported or the model loaded."""
    inputs, _ = brats_inputs
    env = {**os.environ, "PYTHONPATH": ENGINE, "BRAINSEGFOUNDER_HOME": str(tmp_path / "home")}
    huge = nifti_header_only(tmp_path / "huge.nii", (1000, 1000, 1000))
    args = segment_args(brats_model, [("flair", huge), *inputs[1:]], tmp_path / "out.nii.gz", "--device", "cpu")
    run = measured([sys.executable, "-m", "brainsegfounder", *args], env, tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("error: input flair: ")
    assert run.stderr.count("\n") == 1
    assert "claims 1000x1000x1000" in run.stderr
    assert run.peak_mib < 300, run.peak_mib
