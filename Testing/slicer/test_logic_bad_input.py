"""The panel's entry points against bad input: one line (a UserError the panel shows as is)
and the folders exactly as before. The command-line rows are Testing/faults/."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
import slicerio

from helpers import tree_state

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from brainsegfounder.errors import UserError  # noqa: E402
from brainsegfounder.labels import schema  # noqa: E402
from brainsegfounder.outputs import segmentation_dict  # noqa: E402
from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.results import load_segmentation  # noqa: E402

from scenes import DEMO, load_case  # noqa: E402


@pytest.fixture
def panel(brats_inputs, home, tmp_path):
    """A scene with the case's volumes and its ground truth loaded as the segmentation."""
    inputs, truth = brats_inputs
    scene, nodes = load_case(inputs)
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path / "downloads"))
    choice = logic.models.choice(DEMO)
    seg_file = tmp_path / "truth.seg.nrrd"
    labels = sitk.ReadImage(str(truth))
    slicerio.write_segmentation(
        str(seg_file), segmentation_dict(labels, schema("brats_regions").label_values("brats2021"))
    )
    segmentation = load_segmentation(scene, seg_file, nodes["flair"], "truth")
    seg_file.unlink()
    (tmp_path / "cases").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    return logic, choice, logic.guess_inputs(choice), segmentation, tmp_path


CASE_IDS = [
    ("CON", r"Windows|reserved|not usable"),
    ("com1.txt", r"Windows|reserved|not usable"),
    ("patient\n", r"not usable"),
    ("../escape", r"not usable"),
    ("", r"not usable"),
]


@pytest.mark.parametrize(("case_id", "pattern"), CASE_IDS, ids=[repr(c) for c, _ in CASE_IDS])
def test_save_as_training_case_with_a_bad_case_id(panel, case_id, pattern):
    logic, choice, assignment, segmentation, tmp = panel
    before = tree_state(tmp)
    with pytest.raises(UserError, match=pattern) as error:
        logic.save_training_case(assignment, segmentation, choice, case_id, tmp / "cases")
    assert "\n" not in str(error.value)
    assert tree_state(tmp) == before


def test_save_as_training_case_into_a_file(panel):
    logic, choice, assignment, segmentation, tmp = panel
    before = tree_state(tmp)
    with pytest.raises(UserError, match=r"a-file") as error:
        logic.save_training_case(assignment, segmentation, choice, "patient-1", tmp / "a-file")
    assert "\n" not in str(error.value)
    assert tree_state(tmp) == before


def test_fine_tune_without_cases_or_with_a_bad_name(panel, brats_root):
    logic, choice, _assignment, _segmentation, tmp = panel
    before = tree_state(tmp)
    with pytest.raises(UserError, match=r"no training cases in"):
        logic.start_finetune(choice, data=tmp / "cases", run=tmp / "run")
    for name in ("CON", "new-model\n"):
        with pytest.raises(UserError, match=r"not usable"):
            logic.start_finetune(choice, data=brats_root, run=tmp / "run", name=name)
    assert tree_state(tmp) == before


def test_segment_with_one_volume_for_two_inputs(panel):
    logic, choice, assignment, _segmentation, tmp = panel
    before = tree_state(tmp)
    with pytest.raises(UserError, match=r"chosen for both"):
        logic.start_segmentation({**assignment, "t2": assignment["flair"]}, choice, device="cpu")
    assert tree_state(tmp) == before
