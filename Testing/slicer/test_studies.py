"""Load DICOM study (the panel's button, the web app's DICOM upload): the series a model needs,
picked from their headers by the engine, become volumes of the scene (slicer-core's classes),
named after contrast and series, with the reason shown; a refused study adds nothing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from brainsegfounder.dicom_study import read_study, study_inputs  # noqa: E402
from brainsegfounder.errors import UserError  # noqa: E402
from brainsegfounder.imageio import read_volume  # noqa: E402
from brainsegfounder.synth.dicom import write_study  # noqa: E402
from BrainSegFounderSlicerLib.assignment import scalar_volumes  # noqa: E402
from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.volumes import volume_to_image  # noqa: E402

from scenes import DEMO, new_scene  # noqa: E402


@pytest.fixture
def images(brats_inputs):
    return {m: sitk.ReadImage(str(p)) for m, p in brats_inputs[0]}


def _logic(tmp_path):
    scene, _ = new_scene()
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path / "downloads"))
    return logic, logic.models.choice(DEMO)


def test_a_study_loads_the_series_the_model_needs_with_the_reasons(tmp_path, images):
    folder = tmp_path / "study"
    uids = write_study(images, folder, "philips")  # and a localizer, an MPR and a DWI series
    logic, choice = _logic(tmp_path)
    loaded = logic.load_study(folder, choice)
    assert set(loaded.nodes) == {"flair", "t1ce", "t1", "t2"}
    assert len(scalar_volumes(logic.scene)) == 4  # the other series stay out of the scene
    engine_inputs, _ = study_inputs(read_study(folder), choice.inputs)
    for modality, source in engine_inputs:  # what segment --study reads, voxel for voxel and in place
        assert source.choice.series.uid == uids[modality]
        node = loaded.nodes[modality]
        assert node.GetName().startswith(f"{modality} - series ")
        ours, theirs = volume_to_image(node), read_volume(source, modality)
        assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(theirs))
        assert ours.GetOrigin() == pytest.approx(theirs.GetOrigin(), abs=1e-4)
        assert ours.GetDirection() == pytest.approx(theirs.GetDirection(), abs=1e-6)
        assert ours.GetSpacing() == pytest.approx(images[modality].GetSpacing(), abs=1e-4)
        assert node.GetDisplayNode() is not None
    lines = loaded.lines()
    assert len(lines) == 4
    assert lines[0].startswith("FLAIR (T2-FLAIR): series 1")
    assert loaded.case_id == "study"
    t1ce = next(line for line in lines if line.startswith("T1ce"))
    assert "contrast" in t1ce.lower(), t1ce  # why it was taken for the post-contrast T1


def test_a_study_without_a_flair_is_one_line_and_adds_nothing(tmp_path, images):
    folder = tmp_path / "study"
    write_study({m: images[m] for m in ("t1ce", "t1", "t2")}, folder, "ge")
    logic, choice = _logic(tmp_path)
    with pytest.raises(UserError, match="has no FLAIR series") as error:
        logic.load_study(folder, choice)
    assert "\n" not in str(error.value)
    assert scalar_volumes(logic.scene) == []
