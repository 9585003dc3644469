"""The uncertainty overlay and "next uncertain region" on slicer-core's MRML classes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from brainsegfounder.errors import UserError
from BrainSegFounderSlicerLib.logic import WorkflowLogic
from BrainSegFounderSlicerLib.uncertain_regions import COLORS

from helpers import tumour_crop
from scenes import DEMO, load_case, new_scene

SHIFT = np.array([7.0, -3.0, 11.0])  # the inputs' parent transform (RAS, mm)

# (index slices (i, j, k), variance): a large, a smaller and a faint region
BLOBS = {
    "large": ((slice(5, 10), slice(5, 10), slice(3, 7)), 0.1),  # 100 voxels
    "small": ((slice(20, 23), slice(15, 18), slice(8, 11)), 0.05),  # 27 voxels
    "faint": ((slice(2, 6), slice(20, 24), slice(10, 14)), 0.005),  # 64 voxels, below 0.01
}


def write_map(path):
    """A map in LPS (as the engine writes) with an origin and anisotropic voxels; returns each
    blob's centre in local RAS."""
    array = np.zeros((30, 28, 16), np.float32)  # (i, j, k)
    for where, value in BLOBS.values():
        array[where] = value
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(image, str(path))
    centres = {}
    for name, (where, _) in BLOBS.items():
        index = [(s.start + s.stop - 1) / 2 for s in where]
        centres[name] = np.array(image.TransformContinuousIndexToPhysicalPoint(index)) * [-1, -1, 1]
    return centres


@pytest.fixture
def a_scene_with_views_and_a_moved_reference(tmp_path):
    scene, volumes = new_scene()
    views = []
    for name in ("Red", "Yellow"):  # what Slicer's layout manager makes for each slice view
        view = slicer.vtkMRMLSliceNode()
        view.SetLayoutName(name)
        view.SetOrientation("Axial" if name == "Red" else "Sagittal")
        scene.AddNode(view)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        views.append((view, composite))
    centres = write_map(tmp_path / "u.nii.gz")
    reference = volumes.AddArchetypeVolume(str(tmp_path / "u.nii.gz"), "case-t2f")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, SHIFT[axis])
    transform.SetMatrixTransformToParent(matrix)
    reference.SetAndObserveTransformNodeID(transform.GetID())
    return scene, reference, views, centres, tmp_path / "u.nii.gz"


def slice_centre(view):
    matrix = view.GetSliceToRAS()
    return np.array([matrix.GetElement(r, 3) for r in range(3)])


def test_the_map_is_an_overlay_and_regions_come_largest_first_each_once(a_scene_with_views_and_a_moved_reference):
    scene, reference, views, centres, path = a_scene_with_views_and_a_moved_reference
    logic = WorkflowLogic(scene)
    node = logic.load_uncertainty(path, reference, "case uncertainty")
    for _, composite in views:
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == COLORS
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.01)
    assert node.GetTransformNodeID() == reference.GetTransformNodeID()

    large = logic.next_uncertain_region()
    assert np.allclose(large.centre_ras, centres["large"])
    assert large.voxels == 100
    assert large.volume_ml == pytest.approx(100 * 12 / 1000)
    assert large.remaining == 1  # the faint one is below the threshold
    for view, _ in views:  # every view centred on it, in world coordinates
        assert np.allclose(slice_centre(view), centres["large"] + SHIFT)

    small = logic.next_uncertain_region()
    assert np.allclose(small.centre_ras, centres["small"])
    assert (small.voxels, small.remaining) == (27, 0)
    assert logic.next_uncertain_region() is None

    logic.set_uncertainty_threshold(0.004)  # the slider down: only the faint region is new
    assert display.GetLowerThreshold() == pytest.approx(0.004)
    faint = logic.next_uncertain_region()
    assert np.allclose(faint.centre_ras, centres["faint"])
    assert faint.voxels == 64
    assert logic.next_uncertain_region() is None

    again = logic.load_uncertainty(path, reference, "case uncertainty")  # a new run: a new review
    assert again is node
    assert logic.next_uncertain_region().voxels == 100


def test_next_uncertain_region_without_a_map_says_what_to_do():
    logic = WorkflowLogic(new_scene()[0])
    with pytest.raises(UserError, match="segment with the uncertainty map first"):
        logic.next_uncertain_region()


@pytest.mark.slow
def test_a_segmentation_with_its_uncertainty_map_arrives_as_an_overlay(home, tmp_path):
    """Through the background engine: the demo model on a 2 mm case (its own voxel size) small
    enough for one window, so the 8 flips cost 8 passes."""
    from brainsegfounder.synth.cohort import write_cohort
    from BrainSegFounderSlicerLib.models import ModelManager

    root = write_cohort(tmp_path / "data", kind="brats", n=1, seed=5, spacing=2.0, folds=1)
    inputs, _ = tumour_crop(root, tmp_path)
    scene, nodes = load_case(inputs)
    composite = scene.AddNode(slicer.vtkMRMLSliceCompositeNode())
    view = scene.AddNode(slicer.vtkMRMLSliceNode())
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path / "downloads"))
    choice = logic.models.choice(DEMO)
    job = logic.start_segmentation(logic.guess_inputs(choice), choice, device="cpu", uncertainty=True)
    assert "--uncertainty" in job.process.argv
    assert job.wait(timeout=600) == "ok", job.error or job.details()
    result = job.result
    assert composite.GetForegroundVolumeID() == result.uncertainty.GetID()
    assert result.uncertainty.GetImageData().GetDimensions() == nodes["flair"].GetImageData().GetDimensions()
    region = logic.next_uncertain_region()
    assert region is not None
    assert region.voxels > 0
    assert np.allclose(slice_centre(view), region.centre_ras)  # no transform here: world = local
    assert not job.workdir.exists()
