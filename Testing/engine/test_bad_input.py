"""Bad input: one clear 'error:' line, exit code 2, and no output file written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import ROOT, one_error_line, run_cli, segment_args, ssl_checkpoint, write_dicom_series


def expect_clean_failure(capsys, args, out_dir, pattern):
    code, _stdout, stderr = run_cli(args, capsys)
    one_error_line(code, stderr, pattern)
    lines = [line for line in stderr.splitlines() if line.strip()]
    written = [p for p in out_dir.rglob("*") if p.name.startswith(("out", ".out"))]
    assert written == [], f"partial output left behind: {written}"
    return lines[0]


def replace_input(inputs, modality, path):
    return [(m, str(path) if m == modality else p) for m, p in inputs]


def write_array(path, array, like=None):
    image = sitk.GetImageFromArray(array)
    if like is not None and array.ndim == 3:
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def case(tmp_path, brats_inputs, brats_model):
    inputs, _ = brats_inputs
    return inputs, brats_model, tmp_path, sitk.ReadImage(inputs[1][1])


def test_missing_file(capsys, case):
    inputs, model, tmp, _ = case
    args = segment_args(model, replace_input(inputs, "t2", tmp / "nope.nii.gz"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"input t2: .*nope\.nii\.gz does not exist")


def test_modality_absent(capsys, case):
    inputs, model, tmp, _ = case
    args = segment_args(model, inputs[:3], tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"missing input for t2; .*--input flair=PATH")


def test_modality_given_twice_also_through_an_alias(capsys, case):
    inputs, model, tmp, _ = case
    args = segment_args(model, [*inputs, ("t2f", inputs[0][1])], tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"modality flair is given twice")


def test_unknown_modality(capsys, case):
    inputs, model, tmp, _ = case
    args = segment_args(model, [*inputs, ("dwi", inputs[0][1])], tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"unknown modality 'dwi'; this model takes flair, t1ce, t1, t2")


def test_2d_image(capsys, case):
    inputs, model, tmp, _ = case
    path = write_array(tmp / "slice.nii.gz", np.ones((1, 40, 40), np.float32))
    args = segment_args(model, replace_input(inputs, "t1", path), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"2D slice rather than a 3D volume")


def test_4d_image(capsys, case):
    inputs, model, tmp, _ = case
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 4), np.float32), np.eye(4)), str(tmp / "four.nii.gz"))
    args = segment_args(model, replace_input(inputs, "t1", tmp / "four.nii.gz"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"is 4D; give a 3D volume")


def test_vector_image(capsys, case):
    inputs, model, tmp, _ = case
    path = write_array(tmp / "vec.nrrd", np.ones((20, 20, 20, 3), np.float32))
    args = segment_args(model, replace_input(inputs, "t1", path), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"3 components per voxel")


@pytest.mark.parametrize(("suffix", "bad"), [(".nii.gz", np.nan), (".nii.gz", np.inf), (".nrrd", np.nan)])
def test_non_finite_voxels(capsys, case, suffix, bad):
    inputs, model, tmp, like = case
    array = sitk.GetArrayFromImage(like).astype(np.float32)
    array[10, 20, 30] = bad
    if suffix == ".nii.gz":  # SimpleITK would read these as 0 without a word; write with nibabel
        import nibabel as nib

        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), np.eye(4)), str(tmp / f"bad{suffix}"))
    else:
        write_array(tmp / f"bad{suffix}", array, like)
    args = segment_args(model, replace_input(inputs, "t1ce", tmp / f"bad{suffix}"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"1 NaN/inf voxels")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti(capsys, case, suffix):
    """A NIfTI file cut short and (for .gz) compressed again: SimpleITK reads it without a word."""
    import gzip

    inputs, model, tmp, like = case
    whole = write_array(tmp / f"whole{suffix}", sitk.GetArrayFromImage(like).astype(np.float32), like)
    data = whole.read_bytes()
    data = gzip.decompress(data) if suffix == ".nii.gz" else data
    cut = data[: len(data) // 2]
    (tmp / f"cut{suffix}").write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    args = segment_args(model, replace_input(inputs, "t1", tmp / f"cut{suffix}"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"truncated \(\d+ bytes of voxel data missing\)")


def test_multi_member_gzip_is_whole(tmp_path, brats_inputs):
    """bgzip-style files (several gzip members) are complete although the last trailer says less."""
    import gzip

    from brainsegfounder.imageio import read_volume

    data = gzip.decompress(Path(brats_inputs[0][0][1]).read_bytes())
    half = len(data) // 2
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    assert read_volume(tmp_path / "multi.nii.gz").GetSize() == read_volume(brats_inputs[0][0][1]).GetSize()


def test_all_zero_image(capsys, case):
    inputs, model, tmp, like = case
    path = write_array(tmp / "zero.nii.gz", np.zeros(like.GetSize()[::-1], np.float32), like)
    args = segment_args(model, replace_input(inputs, "t1ce", path), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"is empty \(all voxels are zero\)")


def test_inputs_that_do_not_overlap(capsys, case):
    inputs, model, tmp, like = case
    far = sitk.Image(like)
    far.SetOrigin(tuple(np.array(like.GetOrigin()) + 1000.0))
    sitk.WriteImage(far, str(tmp / "far.nii.gz"))
    args = segment_args(model, replace_input(inputs, "t2", tmp / "far.nii.gz"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"input t2 does not overlap the reference image in physical space")


def test_unreadable_file(capsys, case):
    inputs, model, tmp, _ = case
    (tmp / "junk.nii.gz").write_bytes(b"this is not an image" * 10)
    args = segment_args(model, replace_input(inputs, "t1", tmp / "junk.nii.gz"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"input t1: cannot read .*junk\.nii\.gz as an image")


def test_checkpoint_of_another_architecture(capsys, case):
    inputs, _, tmp, _ = case
    from monai.networks.nets import UNet

    torch.save(UNet(3, 4, 3, channels=(8, 16), strides=(2,)).state_dict(), tmp / "unet.pt")
    args = segment_args(tmp / "unet.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"not a SwinUNETR")


def test_checkpoint_with_missing_keys(capsys, case):
    inputs, model, tmp, _ = case
    state = torch.load(model, weights_only=True)["state_dict"]
    state.pop("encoder10.layer.conv1.conv.weight")
    torch.save({"state_dict": state}, tmp / "partial.pt")
    args = segment_args(tmp / "partial.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"1 missing \(encoder10\.layer\.conv1\.conv\.weight\)")


def test_truncated_checkpoint(capsys, case):
    inputs, model, tmp, _ = case
    data = model.read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 3])
    args = segment_args(tmp / "cut.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"checkpoint .*cut.pt is truncated or damaged")


def test_pickled_whole_model(capsys, case):
    inputs, _, tmp, _ = case
    from brainsegfounder.networks import build_network, network_config

    torch.save(build_network(network_config("tiny", "brats")), tmp / "whole.pt")
    args = segment_args(tmp / "whole.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"refused to load .*pickled Python objects")


def test_ssl_checkpoint_cannot_segment(capsys, case):
    inputs, _, tmp, _ = case
    ssl_checkpoint(tmp / "ssl.pt", in_ch=4)
    args = segment_args(tmp / "ssl.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"self-supervised \(pretext-task\) checkpoint .*fine-tune it first")


def test_pretext_model_with_a_full_decoder_cannot_segment(capsys, case):
    """A Volume Fusion or MAE model has a whole decoder, but it predicts its pretext task, not tumour."""
    inputs, _, tmp, _ = case
    from brainsegfounder.checkpoints import ModelMeta, save_checkpoint
    from brainsegfounder.networks import build_network, network_config

    config = network_config("tiny", "brats", "ResEncUNet")
    meta = ModelMeta(network=config, modalities=("flair", "t1ce", "t1", "t2"), label_schema="", task="ssl")
    save_checkpoint(tmp / "vf.pt", build_network(config), meta)
    args = segment_args(tmp / "vf.pt", inputs, tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"self-supervised \(pretext-task\) checkpoint .*finetune --base")
    code, _, err = run_cli(["models", "register", tmp / "vf.pt", "--name", "vf"], capsys)
    assert code == 2
    assert "cannot segment" in err


def test_output_folder_that_cannot_be_written(capsys, case):
    inputs, model, tmp, _ = case
    (tmp / "a_file").write_text("blocks the folder name")
    args = segment_args(model, inputs, tmp / "a_file" / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"cannot write the output folder")


def test_unsupported_output_format(capsys, case):
    inputs, model, tmp, _ = case
    args = segment_args(model, inputs, tmp / "out.png")
    expect_clean_failure(capsys, args, tmp, r"must end in one of \.nii\.gz")


def test_existing_output_survives_a_failed_run(capsys, case):
    inputs, model, tmp, _ = case
    previous = tmp / "keep" / "labels.nii.gz"
    previous.parent.mkdir()
    previous.write_bytes(b"an earlier result")
    args = segment_args(model, replace_input(inputs, "t2", tmp / "missing.nii.gz"), previous)
    code, _, _ = run_cli(args, capsys)
    assert code == 2
    assert previous.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in previous.parent.iterdir()) == ["labels.nii.gz"]


def test_debug_shows_the_traceback(capsys, case):
    inputs, model, tmp, _ = case
    from brainsegfounder.errors import UserError

    with pytest.raises(UserError):
        run_cli(segment_args(model, inputs[:3], tmp / "out.nii.gz", "--debug"), capsys)


@pytest.mark.slow
def test_cli_exit_code_and_single_line_in_a_real_process(tmp_path, brats_inputs, brats_model):
    import subprocess
    import sys

    inputs, _ = brats_inputs
    args = segment_args(brats_model, inputs[:3], tmp_path / "out.nii.gz")
    result = subprocess.run(
        [sys.executable, "-m", "brainsegfounder", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "BrainSegFounderSlicer")},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: missing input for t2")


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--device", "cuda"], r"PyTorch sees no CUDA GPU here; use --device cpu or auto"),
        (["--device", "tpu"], r"unknown device 'tpu'"),
        (["--roi", "100"], r"ROI \(100, 100, 100\) is not usable: each side must be a multiple of 32"),
        (["--overlap", "1.5"], r"overlap must be in \[0, 1\)"),
        (["--task", "atlas"], r"is for task 'brats', not 'atlas'"),
    ],
)
def test_bad_settings(capsys, case, extra, pattern):
    import torch

    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    inputs, model, tmp, _ = case
    expect_clean_failure(capsys, segment_args(model, inputs, tmp / "out.nii.gz", *extra), tmp, pattern)


def test_folder_with_two_dicom_series(capsys, case):
    inputs, model, tmp, like = case
    write_dicom_series(like, tmp / "a")
    second = sitk.Image(like)
    second.SetOrigin(tuple(np.array(like.GetOrigin()) + 1.0))
    write_dicom_series(second, tmp / "b", series_uid="1.2.826.0.1.3680043.2.1125.1.43")
    for f in (tmp / "b").iterdir():
        f.rename(tmp / "a" / f"b_{f.name}")
    args = segment_args(model, replace_input(inputs, "flair", tmp / "a"), tmp / "out.nii.gz")
    expect_clean_failure(capsys, args, tmp, r"holds 2 DICOM series; give the folder of one series")
