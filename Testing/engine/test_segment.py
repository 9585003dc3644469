"""End-to-end segmentation through the CLI: geometry, outputs, label conventions, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from helpers import run_cli, segment_args, write_dicom_series


def assert_same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def test_segment_writes_labels_seg_nrrd_and_summary(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    out = tmp_path / "labels.nii.gz"
    code, _stdout, stderr = run_cli(
        segment_args(brats_model, inputs, out, "--seg-nrrd", tmp_path / "s.seg.nrrd", "--summary", tmp_path / "s.json"),
        capsys,
    )
    assert code == 0, stderr
    reference = sitk.ReadImage(inputs[0][1])
    labels = sitk.ReadImage(str(out))
    assert_same_grid(labels, reference)
    values = set(np.unique(sitk.GetArrayFromImage(labels)))
    assert values <= {0, 1, 2, 4}, values
    assert values - {0}, "the tiny model's thresholded output should not be empty"

    seg = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))
    names = {s["name"]: s for s in seg["segments"]}
    assert set(names) == {"Necrotic tumor core", "Peritumoral edema", "Enhancing tumor"}
    assert names["Peritumoral edema"]["terminology"]["type"][1] == "79654002"
    assert names["Necrotic tumor core"]["terminology"]["type"][1] == "6574001"
    assert names["Enhancing tumor"]["labelValue"] == 4
    assert np.allclose(seg["ijkToLPS"][:3, 3], reference.GetOrigin())
    assert np.allclose(np.linalg.norm(seg["ijkToLPS"][:3, :3], axis=0), reference.GetSpacing())
    assert np.array_equal(seg["voxels"], sitk.GetArrayFromImage(labels).transpose(2, 1, 0))

    summary = json.loads((tmp_path / "s.json").read_text())
    voxel_ml = np.prod(reference.GetSpacing()) / 1000
    ed = np.count_nonzero(sitk.GetArrayFromImage(labels) == 2) * voxel_ml
    assert summary["regions"]["ED"]["volume_ml"] == pytest.approx(ed, abs=1e-3)
    assert summary["regions"]["WT"]["volume_ml"] >= summary["regions"]["TC"]["volume_ml"]
    assert summary["model"]["name"] == "tiny-brats"
    assert summary["inference"]["windows"] >= 1
    assert summary["timings_s"]["inference_s"] > 0


def test_brats2023_convention_moves_only_et(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    for convention in ("brats2021", "brats2023"):
        code, _, err = run_cli(
            segment_args(brats_model, inputs, tmp_path / f"{convention}.nii.gz", "--labels", convention), capsys
        )
        assert code == 0, err
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "brats2021.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "brats2023.nii.gz")))
    assert np.array_equal(a == 4, b == 3)
    assert np.array_equal(a == 1, b == 1)
    assert np.array_equal(a == 2, b == 2)
    assert not np.any(b == 4)


def rotated_grid(reference: sitk.Image, spacing=1.5, angle_deg=20.0) -> sitk.Image:
    """An oblique 1.5 mm grid covering the reference's field of view, origin elsewhere."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.deg2rad(8), np.deg2rad(-5), np.deg2rad(angle_deg))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3)
    extent = np.array(reference.GetSize()) * np.array(reference.GetSpacing())
    size = [int(e / spacing * 1.3) for e in extent]
    center = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in reference.GetSize()])
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(np.array(center) - direction @ ((np.array(size) - 1) / 2 * spacing)))
    return grid


def test_input_on_rotated_grid_lands_on_reference_grid(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    reference = sitk.ReadImage(inputs[0][1], sitk.sitkFloat32)
    t1 = sitk.ReadImage(inputs[2][1], sitk.sitkFloat32)
    oblique = sitk.Resample(t1, rotated_grid(reference), sitk.Transform(), sitk.sitkLinear, 0.0)
    sitk.WriteImage(oblique, str(tmp_path / "t1_oblique.nrrd"))
    moved = [(m, str(tmp_path / "t1_oblique.nrrd") if m == "t1" else p) for m, p in inputs]
    code, _, err = run_cli(
        segment_args(brats_model, moved, tmp_path / "out.nii.gz", "--summary", tmp_path / "s.json"), capsys
    )
    assert code == 0, err
    assert_same_grid(sitk.ReadImage(str(tmp_path / "out.nii.gz")), reference)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["inputs"]["t1"]["resampled_to_reference"]
    assert not summary["inputs"]["t2"]["resampled_to_reference"]
    # The engine's resampling through physical space brings back the original T1.
    from brainsegfounder.geometry import resample_to

    back, _ = resample_to(sitk.ReadImage(str(tmp_path / "t1_oblique.nrrd")), reference, "t1")
    a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(t1)
    brain = sitk.GetArrayFromImage(reference) > 0
    assert np.corrcoef(a[brain], b[brain])[0, 1] > 0.9


def test_orientation_of_the_files_does_not_change_the_result(tmp_path, capsys, brats_model, brats_inputs):
    """The same scans stored RAS instead of LPS give the same labels, on their own grid."""
    inputs, _ = brats_inputs
    ras_inputs = []
    for modality, path in inputs:
        ras = sitk.DICOMOrient(sitk.ReadImage(path), "RAS")
        sitk.WriteImage(ras, str(tmp_path / f"{modality}_ras.nii.gz"))
        ras_inputs.append((modality, str(tmp_path / f"{modality}_ras.nii.gz")))
    for name, given in (("lps", inputs), ("ras", ras_inputs)):
        code, _, err = run_cli(segment_args(brats_model, given, tmp_path / f"{name}.nii.gz"), capsys)
        assert code == 0, err
    lps = sitk.ReadImage(str(tmp_path / "lps.nii.gz"))
    ras = sitk.ReadImage(str(tmp_path / "ras.nii.gz"))
    assert_same_grid(ras, sitk.ReadImage(ras_inputs[0][1]))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ras.GetDirection()) == "RAS"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(ras, "LPS")), sitk.GetArrayFromImage(lps))


def test_dicom_series_folder_as_reference_input(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    write_dicom_series(sitk.ReadImage(inputs[0][1]), tmp_path / "flair_dicom")
    given = [("flair", str(tmp_path / "flair_dicom")), *inputs[1:]]
    code, _, err = run_cli(segment_args(brats_model, given, tmp_path / "out.nrrd"), capsys)
    assert code == 0, err
    assert_same_grid(sitk.ReadImage(str(tmp_path / "out.nrrd")), sitk.ReadImage(inputs[0][1]))


def test_atlas_preset_on_a_stroke_case(tmp_path, capsys, atlas_model):
    from brainsegfounder.synth.cohort import case_files, write_cohort

    root = write_cohort(tmp_path / "atlas", kind="stroke", n=1, seed=5, spacing=3.0)
    _, images, _ = case_files("atlas", 0)
    out = tmp_path / "lesion.nii.gz"
    code, _, err = run_cli(
        segment_args(atlas_model, [("t1", root / images["t1"])], out, "--seg-nrrd", tmp_path / "l.seg.nrrd"), capsys
    )
    assert code == 0, err
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(str(root / images["t1"])))
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))) <= {0, 1}
    seg = slicerio.read_segmentation(str(tmp_path / "l.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["Stroke lesion"]


def test_brainsegfounder_format_checkpoint_segments(tmp_path, capsys, brats_inputs):
    """A released-format file ({epoch, best_acc, state_dict}, no metadata) segments as is."""
    import torch

    from brainsegfounder.networks import build_network, network_config

    torch.manual_seed(9)
    state = build_network(network_config("tiny", "brats")).state_dict()
    torch.save({"epoch": 300, "best_acc": 0.9, "state_dict": state}, tmp_path / "released.pt")
    inputs, _ = brats_inputs
    code, _, err = run_cli(
        segment_args(
            tmp_path / "released.pt",
            inputs,
            tmp_path / "o.nii.gz",
            "--roi",
            "64",
            "--summary",
            tmp_path / "s.json",
            "--spacing",
            "input",  # the file says nothing of spacing (1 mm assumed): a 3 mm case stays 3 mm here
        ),
        capsys,
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["model"]["format"] == "finetuned"
    assert summary["model"]["task"] == "brats"
    assert summary["inference"]["model_spacing_mm"] == [1.0, 1.0, 1.0]
    assert summary["inference"]["run_at_spacing_mm"] == [3.0, 3.0, 3.0]


@pytest.mark.slow
def test_json_progress_protocol(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    args = segment_args(brats_model, inputs, tmp_path / "o.nii.gz", "--tta")
    args[args.index("--progress") + 1] = "json"
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records[-1]["status"] == "ok"
    assert records[-1]["output"].endswith("o.nii.gz")
    inference = [r for r in records if r.get("stage") == "inference"]
    total = inference[-1]["total"]
    assert total % 8 == 0
    assert inference[-1]["done"] == total
    assert [r["done"] for r in inference] == list(range(total + 1))
    assert all("eta_s" in r for r in inference)
