"""MONAI bundles: a model exported, run by MONAI's own bundle runner, imported back, segmenting
as before; bundles that are not of our networks, incomplete or unsafe refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace

import pytest
import SimpleITK as sitk
import torch

from brainsegfounder.bundles import export_bundle, import_bundle, verify
from brainsegfounder.checkpoints import load_checkpoint, save_checkpoint
from brainsegfounder.inference import InferenceSettings
from brainsegfounder.model_space import PrepOptions
from brainsegfounder.networks import SwinUNETRConfig, build_network
from brainsegfounder.registry import local_models
from brainsegfounder.segment import segment_files

from conftest import balanced_model
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("home")  # an empty registry of local models per test
ORDER = ("flair", "t1ce", "t1", "t2")


def labels_of(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def ours(model, inputs, output):
    """`brainsegfounder segment` as the bundle reproduces it: PyTorch, the inputs as they are."""
    settings = InferenceSettings(runtime="torch")
    segment_files(str(model), inputs, output, device="cpu", settings=settings, preprocessing=PrepOptions(mode="off"))
    return labels_of(output)


def case_folder(inputs, folder):
    """The case's files named so they sort in the model's channel order (the bundle's README)."""
    folder.mkdir()
    paths = dict(inputs)
    for i, modality in enumerate(ORDER):
        shutil.copy(paths[modality], folder / f"{i}_{modality}.nii.gz")
    return folder


def monai_bundle_run(bundle, case):
    """`python -m monai.bundle run`, as a user of the bundle types it; the label map it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--meta_file", "configs/metadata.json", "--bundle_root", ".", "--dataset_dir", str(case)],
        cwd=bundle, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (written,) = (bundle / "eval").glob("*.nii.gz")
    return labels_of(written)


def monai09_swin(path, inputs):
    """A BrainSegFounder-style model: merge order monai0.9, which MONAI >= 1.5 cannot compute."""
    balanced_model(path, "brats", 5, inputs)
    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    network = SwinUNETRConfig(**{**meta.network.to_dict(), "merge_order": "monai0.9"})
    model = build_network(network)
    model.load_state_dict(ckpt.state_dict)
    return save_checkpoint(path, model, replace(meta, network=network))


@pytest.mark.slow  # three bundles through MONAI's runner: about a minute
@pytest.mark.parametrize("kind", ["swinunetr", "resenc", "swinunetr-monai0.9"])
def test_an_exported_bundle_labels_every_voxel_as_segment_does(tmp_path, brats_inputs, kind):
    inputs, _ = brats_inputs
    model = tmp_path / "model.pt"
    if kind == "swinunetr-monai0.9":
        monai09_swin(model, inputs)
    else:
        balanced_model(model, "brats", 3, inputs, architecture="ResEncUNet" if kind == "resenc" else "SwinUNETR")
    bundle = export_bundle(str(model), tmp_path / "bundle")
    network_def = json.loads((bundle / "configs" / "inference.json").read_text())["network_def"]
    # MONAI's own networks where they compute the model's function; ours where MONAI cannot
    expected_target = {
        "swinunetr": "SwinUNETR",
        "resenc": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "swinunetr-monai0.9": "brainsegfounder.networks.network_from_settings",
    }[kind]
    assert network_def["_target_"] == expected_target
    expected = ours(model, inputs, tmp_path / "ours.nii.gz")
    assert (expected > 0).sum() > 1000  # a real comparison: the model labels a good part of the brain
    got = monai_bundle_run(bundle, case_folder(inputs, tmp_path / "case"))
    assert got.shape == expected.shape
    assert (got != expected).sum() == 0


def test_a_bundle_has_the_specified_files_and_verified_metadata(tmp_path, capsys, brats_model):
    bundle = export_bundle(str(brats_model), tmp_path / "bundle")
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"):
        assert (bundle / part).is_file(), part
    metadata = verify(bundle)
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["channel_def"] == {"0": "FLAIR", "1": "T1c", "2": "T1", "3": "T2"}
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "TC", "1": "WT", "2": "ET"}
    for key in ("monai_version", "pytorch_version", "numpy_version", "authors", "copyright", "license"):
        assert metadata[key], key
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(weights) == set(load_checkpoint(brats_model).state_dict)
    code, _, err = run_cli(["models", "export-bundle", brats_model, "--out", bundle, "--progress", "none"], capsys)
    assert code == 2
    assert "exists and is not empty" in err.strip().splitlines()[-1]


def test_a_bundle_imported_from_a_folder_or_a_zip_segments_as_the_original(tmp_path, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    bundle = export_bundle(str(brats_model), tmp_path / "bundle")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in bundle.rglob("*"):
            z.write(path, f"brats-bundle/{path.relative_to(bundle)}")  # one folder inside, as zips usually hold
    expected = ours(brats_model, inputs, tmp_path / "original.nii.gz")
    for source, name in ((bundle, "from-folder"), (archive, "from-zip")):
        registered = import_bundle(source, name)
        assert local_models()[name] == registered
        assert load_checkpoint(registered).meta.modalities == ORDER
        got = ours(name, inputs, tmp_path / f"{name}.nii.gz")
        assert (got != expected).sum() == 0, name


def foreign_bundle(folder, monai_version="1.4.0", target="monai.networks.nets.SwinUNETR", weights=None):
    """A bundle as another team writes one: MONAI's SwinUNETR, BraTS channels, plain state dict."""
    config = SwinUNETRConfig(
        in_channels=4, out_channels=3, feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)
    )
    for part in ("configs", "models"):
        (folder / part).mkdir(parents=True)
    tensors = {
        "image": {
            "type": "image",
            "format": "magnitude",
            "num_channels": 4,
            "spatial_shape": [96, 96, 96],
            "dtype": "float32",
            "value_range": [],
            "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"},
        }
    }
    outputs = {
        "pred": {
            "type": "image",
            "format": "segmentation",
            "num_channels": 3,
            "spatial_shape": [96, 96, 96],
            "dtype": "float32",
            "value_range": [0, 1],
            "channel_def": {"0": "TC", "1": "WT", "2": "ET"},
        }
    }
    metadata = {
        "schema": "https://example.org/schema.json",
        "version": "0.5.0",
        "monai_version": monai_version,
        "pytorch_version": "2.1.0",
        "numpy_version": "1.24.0",
        "task": "BraTS",
        "name": "their-brats",
        "description": "a BraTS model",
        "authors": "another team",
        "copyright": "another team",
        "license": "CC BY-NC 4.0",
        "network_data_format": {"inputs": tensors, "outputs": outputs},
    }
    inference = {
        "roi": [96, 96, 96],
        "network_def": {"_target_": target, "in_channels": 4, "out_channels": 3, "feature_size": 12},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "overlap": 0.5},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.save(weights if weights is not None else build_network(config).state_dict(), folder / "models" / "model.pt")
    return folder  # fmt: skip


def test_another_teams_swinunetr_bundle_is_imported_with_the_merge_order_of_its_monai(tmp_path):
    old = load_checkpoint(import_bundle(foreign_bundle(tmp_path / "old"), "old"))
    assert old.meta.network.merge_order == "monai0.9"  # made with MONAI 1.4: the order before 1.5's change
    assert old.meta.modalities == ("t1ce", "t1", "t2", "flair")
    assert old.meta.roi_size == (96, 96, 96)  # the inferer's, through its @reference
    assert old.meta.label_schema == "brats_regions"
    new = load_checkpoint(import_bundle(foreign_bundle(tmp_path / "new", monai_version="1.5.1"), "new"))
    assert new.meta.network.merge_order == "monai1.5"
    assert json.loads(new.path.with_suffix(".json").read_text())["license"] == "CC BY-NC 4.0"


def break_metadata(folder):
    path = folder / "configs" / "metadata.json"
    data = json.loads(path.read_text())
    del data["version"]
    path.write_text(json.dumps(data))


def zip_escaping(folder):
    archive = folder.parent / "escape.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bundle/configs/metadata.json", "{}")
        z.writestr("../../outside.txt", "x")
    return archive


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda f: foreign_bundle(f, target="monai.networks.nets.UNet"), "only SwinUNETR and ResEnc U-Net"),
        (lambda f: (foreign_bundle(f) / "models" / "model.pt").unlink() or f, "has no models/model.pt"),
        (lambda f: break_metadata(foreign_bundle(f)) or f, "does not follow the MONAI bundle specification"),
        (lambda f: foreign_bundle(f, weights={"net": torch.nn.Linear(2, 2)}), "pickled Python objects"),
        (lambda f: foreign_bundle(f, weights={"swinViT.patch_embed.proj.weight": torch.zeros(1)}), "model.pt"),
        (lambda f: zip_escaping(foreign_bundle(f)), "points outside the archive's folder"),
    ],
    ids=["not-our-network", "no-weights", "incomplete-metadata", "pickled-model", "wrong-weights", "zip-slip"],
)
def test_a_bundle_that_cannot_be_ours_is_one_line_and_registers_nothing(tmp_path, capsys, make, message):
    source = make(tmp_path / "bundle")
    code, _, err = run_cli(["models", "import-bundle", source, "--progress", "none"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], err
    assert local_models() == {}
    assert not (tmp_path.parent / "outside.txt").exists()
    assert not any(p.name.startswith("bsf-bundle-") for p in tmp_path.iterdir())


def test_a_bundle_export_of_a_pretraining_model_is_refused(tmp_path, capsys, brats_model):
    ckpt = load_checkpoint(brats_model)
    model = build_network(ckpt.network)
    model.load_state_dict(ckpt.state_dict)
    save_checkpoint(tmp_path / "pretext.pt", model, replace(ckpt.meta, task="ssl"))  # a pretext task's model
    code, _, err = run_cli(["models", "export-bundle", tmp_path / "pretext.pt", "--out", tmp_path / "b"], capsys)
    assert code == 2
    assert "pretraining model" in err
    assert [p.name for p in tmp_path.iterdir()] == ["pretext.pt"]  # no bundle, no staging folder left
