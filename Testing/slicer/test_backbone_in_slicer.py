"""A ResEnc U-Net model through the panel's Logic, on the real MRML classes of slicer-core: it is
offered in the model list with its architecture and segments as a SwinUNETR model does."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import wait_until

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.results import label_image  # noqa: E402

from scenes import load_case  # noqa: E402

pytestmark = pytest.mark.slow  # a segmentation in a background process


def test_a_resenc_model_segments_through_the_logic(home, tmp_path, brats_inputs):
    from brainsegfounder.registry import register_model
    from brainsegfounder.segment import segment_files

    from conftest import balanced_model

    inputs, _ = brats_inputs
    model = balanced_model(tmp_path / "resenc-tiny.pt", "brats", 6, inputs, "ResEncUNet")
    register_model(model, "resenc-tiny")
    scene, nodes = load_case(inputs)
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path / "downloads"))
    choice = logic.models.choice("local:resenc-tiny")
    assert (choice.architecture, choice.title) == ("ResEncUNet", "resenc-tiny (local, ResEncUNet)")
    job = logic.start_segmentation(logic.guess_inputs(choice), choice, device="cpu")
    wait_until(job.poll, 600, "the background segmentation to finish", on_timeout=job.cancel)
    assert job.status == "ok", job.error or job.details()
    # the label map the panel shows equals what the engine writes for the same files
    segment_files(str(choice.path), inputs, tmp_path / "direct.nii.gz", device="cpu")
    direct = sitk.ReadImage(str(tmp_path / "direct.nii.gz"))
    names = {1: "Necrotic tumor core", 2: "Peritumoral edema", 4: "Enhancing tumor"}
    ours = label_image(scene, job.segmentation, nodes["flair"], names)
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(direct))
    assert (sitk.GetArrayFromImage(direct) > 0).any()  # the balanced model labels part of the brain
