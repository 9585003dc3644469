"""The shipped terminology resolves every segment the engine writes, in slicer-core's terminologies logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from brainsegfounder.labels import GENERAL_ANATOMY, TERMINOLOGY_CONTEXT, schema  # noqa: E402
from brainsegfounder.outputs import segmentation_dict  # noqa: E402
from BrainSegFounderSlicerLib.results import load_segmentation, segment_terminology  # noqa: E402
from BrainSegFounderSlicerLib.terminology import TERMINOLOGY_FILE, load_terminology, loaded_types  # noqa: E402

from scenes import new_scene  # noqa: E402

# Codes Slicer 5.8 / 5.10's General Anatomy list holds (read in its SegmentationCategoryTypeModifier-
# SlicerGeneralAnatomy.json): (category, type). It has neither 86049000 nor 55641003.
GENERAL_ANATOMY_HOLDS = {("49755003", "6574001"), ("49755003", "79654002"), ("85756007", "85756007")}
SCHEMAS = ("brats_regions", "lesion", "multilabel:left,right")


def every_segment():
    for name in SCHEMAS:
        for convention in ("brats2021", "brats2023"):
            yield from schema(name).label_values(convention).values()


@pytest.fixture
def terminologies():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert load_terminology(logic) == TERMINOLOGY_CONTEXT
    return logic


def test_every_segment_the_engine_writes_resolves_in_a_loaded_terminology(terminologies):
    ours = set(loaded_types(terminologies, TERMINOLOGY_CONTEXT))
    assert {("49755003", "86049000"), ("49755003", "55641003")} <= ours
    for segment in every_segment():
        entry = segment.terminology
        codes = (entry["category"][1], entry["type"][1])
        if entry["contextName"] == TERMINOLOGY_CONTEXT:
            assert codes in ours, segment
        else:
            assert entry["contextName"] == GENERAL_ANATOMY
            assert codes in GENERAL_ANATOMY_HOLDS, segment


def test_the_shipped_file_agrees_with_the_engine_on_names_and_colours():
    document = json.loads(TERMINOLOGY_FILE.read_text())
    assert document["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    types = {t["CodeValue"]: t for c in document["SegmentationCodes"]["Category"] for t in c["Type"]}
    for segment in every_segment():
        if segment.terminology["contextName"] != TERMINOLOGY_CONTEXT:
            continue
        listed = types[segment.snomed[1]]
        assert listed["CodeMeaning"] == segment.snomed[2]
        assert listed["recommendedDisplayRGBValue"] == [round(c * 255) for c in segment.color]


def test_a_segmentation_read_by_slicer_carries_entries_the_terminology_resolves(terminologies, tmp_path):
    """Engine -> .seg.nrrd -> Slicer's segmentation reader -> the entry deserialised by the logic."""
    labels = sitk.GetImageFromArray(np.array([[[0, 1, 2, 4]] * 4] * 4, dtype=np.uint8))
    path = tmp_path / "labels.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation_dict(labels, schema("brats_regions").label_values()))
    sitk.WriteImage(labels, str(tmp_path / "reference.nrrd"))
    scene, volumes = new_scene()
    reference = volumes.AddArchetypeVolume(str(tmp_path / "reference.nrrd"), "reference")
    node = load_segmentation(scene, path, reference, "seg")
    ours = set(loaded_types(terminologies, TERMINOLOGY_CONTEXT))
    entry = slicer.vtkSlicerTerminologyEntry()
    enhancing = segment_terminology(node.GetSegmentation().GetSegment("ET"))
    assert terminologies.DeserializeTerminologyEntry(enhancing, entry)
    assert entry.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
    assert (entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()) in ours
