"""The panel's workflow through the Logic, on the real MRML classes of slicer-core.

Volumes are read by Slicer's own volumes logic; segmentation runs in a background process with
the shipped demo model; results come back through Slicer's segmentation reader.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import save_cases, wait_until

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from brainsegfounder.allocator import tcmalloc_library  # noqa: E402
from brainsegfounder.errors import UserError  # noqa: E402
from BrainSegFounderSlicerLib.assignment import check_assignment, guess_assignment  # noqa: E402
from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.results import label_image, segment_mask, segment_terminology  # noqa: E402
from BrainSegFounderSlicerLib.training import case_count, case_id_from  # noqa: E402
from BrainSegFounderSlicerLib.volumes import volume_to_image  # noqa: E402

from scenes import DEMO, load_case  # noqa: E402


@pytest.fixture
def logic_env(home, tmp_path):
    """A Logic whose downloads go to a private cache (the demo model ships with the extension)."""
    return ModelManager(cache=tmp_path / "downloads")


@pytest.fixture(scope="module")
def segmented(brats_inputs, tmp_path_factory):
    """One segmentation through the background runner, shared by the result tests."""
    os.environ["BRAINSEGFOUNDER_HOME"] = str(tmp_path_factory.mktemp("home"))
    inputs, truth = brats_inputs
    scene, nodes = load_case(inputs)
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path_factory.mktemp("dl")))
    choice = logic.models.choice(DEMO)
    assignment = logic.guess_inputs(choice)
    job = logic.start_segmentation(assignment, choice, device="cpu")
    stages = []

    def finished():
        if job.poll():
            return True
        stages.append(job.progress.stage)
        return False

    wait_until(finished, 600, "the background segmentation to finish", on_timeout=job.cancel)
    yield dict(
        scene=scene,
        nodes=nodes,
        logic=logic,
        choice=choice,
        job=job,
        stages=stages,
        inputs=inputs,
        truth=truth,
        assignment=assignment,
    )
    os.environ.pop("BRAINSEGFOUNDER_HOME", None)


def test_volumes_keep_their_voxels_and_geometry(brats_inputs, tmp_path):
    inputs, _ = brats_inputs
    scene, nodes = load_case(inputs)
    for modality, path in inputs:
        ours, read = volume_to_image(nodes[modality]), sitk.ReadImage(str(path))
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(read))
        assert np.allclose(ours.GetOrigin(), read.GetOrigin())
        assert np.allclose(ours.GetSpacing(), read.GetSpacing())
        assert np.allclose(ours.GetDirection(), read.GetDirection())
    # an oblique RAS-stored file keeps its physical geometry through Slicer's reader and back
    image = sitk.ReadImage(str(inputs[0][1]))
    direction = np.array([[-0.98, -0.17, 0.0], [0.17, -0.98, 0.0], [0.0, 0.0, 1.0]])
    direction /= np.linalg.norm(direction, axis=0)
    image.SetDirection(direction.ravel())
    sitk.WriteImage(image, str(tmp_path / "oblique.nii.gz"))
    volumes = scene._keep[0]
    node = volumes.AddArchetypeVolume(str(tmp_path / "oblique.nii.gz"), "oblique")
    back = volume_to_image(node)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)


def test_modality_assignment_from_volume_names(brats_inputs):
    inputs, _ = brats_inputs
    _scene, nodes = load_case(inputs)
    needed = ["flair", "t1ce", "t1", "t2"]
    guessed = guess_assignment([nodes[m] for m in needed], needed)
    assert {m: n.GetName() for m, n in guessed.items()} == {
        "flair": "case7-t2f",
        "t1ce": "case7-t1c",
        "t1": "case7-t1n",
        "t2": "case7-t2w",
    }
    # a choice the user made is kept; nothing else is guessed onto that volume
    kept = guess_assignment(list(nodes.values()), needed, keep={"t1": nodes["t1ce"]})
    assert kept["t1"] is nodes["t1ce"]
    assert kept["t1ce"] is None
    with pytest.raises(UserError, match="T1ce"):
        check_assignment(kept)
    with pytest.raises(UserError, match="chosen for both"):
        check_assignment({**guessed, "t2": nodes["flair"]})
    # older spellings and unrelated volumes
    _scene2, nodes2 = load_case(
        inputs, {"flair": "Brain FLAIR", "t1ce": "T1 post Gd", "t1": "MPRAGE", "t2": "localizer"}
    )
    guessed2 = guess_assignment(list(nodes2.values()), needed)
    assert guessed2["flair"] is nodes2["flair"]
    assert guessed2["t1"] is nodes2["t1"]
    assert guessed2["t2"] is None


def test_segmentation_comes_back_named_coloured_coded_on_the_reference_grid(segmented, tmp_path):
    job, scene, nodes = segmented["job"], segmented["scene"], segmented["nodes"]
    assert job.status == "ok", job.error
    assert job.result.segmentation is job.segmentation  # the jobs' interface: result and message
    assert job.result.table is job.table
    assert job.message.startswith(f"Done: {job.segmentation.GetName()}.")
    assert "inference" in segmented["stages"]
    assert not job.workdir.exists()  # the exported inputs and engine outputs are cleaned up
    seg = job.segmentation
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Necrotic tumor core", "Peritumoral edema", "Enhancing tumor"]
    edema = segmentation.GetSegment("ED")
    assert np.allclose(edema.GetColor(), (0.30, 0.75, 0.30))
    assert "SCT^79654002^Edema" in segment_terminology(edema)
    assert "SCT^6574001^Necrosis" in segment_terminology(segmentation.GetSegment("NCR"))
    assert "SCT^86049000" in segment_terminology(segmentation.GetSegment("ET"))
    assert seg.GetAttribute("BrainSegFounder.Model") == DEMO
    # the demo model is not for real scans: the panel shows the engine's note with the result
    assert job.notes[0].startswith("model brats-synthetic-demo was trained on synthetic data only"), job.notes
    assert seg.GetAttribute("BrainSegFounder.Notes").startswith("model brats-synthetic-demo was trained")
    # the engine's warnings (none on the sample case: one grid, skull-stripped) travel the same way
    assert job.result.warnings == tuple(job.warnings) == ()
    assert seg.GetAttribute("BrainSegFounder.Warnings") == ""
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")  # shown in 3D
    # geometry: the segmentation's reference geometry is the FLAIR volume's, voxel for voxel
    flair = nodes["flair"]
    mask = segment_mask(scene, seg, "ED", flair)
    assert mask.shape == tuple(flair.GetImageData().GetDimensions()[::-1])
    # and the label map equals what the engine writes for the same files, run directly
    from brainsegfounder.segment import segment_files

    segment_files(str(segmented["choice"].path), segmented["inputs"], tmp_path / "direct.nii.gz", device="cpu")
    direct = sitk.ReadImage(str(tmp_path / "direct.nii.gz"))
    ours = label_image(scene, seg, flair, {1: "Necrotic tumor core", 2: "Peritumoral edema", 4: "Enhancing tumor"})
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(direct))
    assert np.allclose(ours.GetOrigin(), direct.GetOrigin())
    assert np.allclose(ours.GetDirection(), direct.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(ours))) == {0, 1, 2, 4}
    # the volume table holds each label and the TC / WT regions, in mL
    table = job.table.GetTable()
    rows = {table.GetValue(r, 0).ToString(): table.GetValue(r, 2).ToDouble() for r in range(table.GetNumberOfRows())}
    voxel_ml = np.prod(direct.GetSpacing()) / 1000
    counts = np.bincount(sitk.GetArrayFromImage(direct).ravel(), minlength=5)
    assert rows["Peritumoral edema"] == pytest.approx(counts[2] * voxel_ml, abs=0.01)
    assert rows["WT (region)"] == pytest.approx((counts[1] + counts[2] + counts[4]) * voxel_ml, abs=0.01)


def test_save_as_training_case_round_trip(segmented, tmp_path):
    from brainsegfounder.cases import list_cases

    scene, seg, flair = segmented["scene"], segmented["job"].segmentation, segmented["nodes"]["flair"]
    logic, choice = segmented["logic"], segmented["choice"]
    # an annotator's correction: the edema segment loses its upper half
    known = {1: "Necrotic tumor core", 2: "Peritumoral edema", 4: "Enhancing tumor"}
    before = sitk.GetArrayFromImage(label_image(scene, seg, flair, known))
    edema = segment_mask(scene, seg, "ED", flair)
    edema[edema.shape[0] // 2 :] = False
    paint(seg, "ED", edema, flair)
    corrected = sitk.GetArrayFromImage(label_image(scene, seg, flair, known))
    assert (corrected == 2).sum() < (before == 2).sum()

    root = tmp_path / "cases"
    case_id = case_id_from(flair.GetName())
    assert case_id == "case7"
    first = logic.save_training_case(segmented["assignment"], seg, choice, case_id, root)
    second = logic.save_training_case(segmented["assignment"], seg, choice, case_id, root, note="second look")
    assert (first.revision, second.revision) == (1, 2)
    assert first.folder != second.folder
    assert case_count(root) == 1
    assert list_cases(root)[0].revision == 2
    info = second.info
    assert info["modalities"] == ["flair", "t1ce", "t1", "t2"]
    assert info["source_model"]["key"] == DEMO
    assert info["note"] == "second look"
    assert len(info["content_sha256"]) == 64
    saved_label = sitk.ReadImage(str(second.folder / "label.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(saved_label), corrected)
    for modality, path in segmented["inputs"]:
        saved = sitk.ReadImage(str(second.folder / f"{modality}.nii.gz"))
        original = sitk.ReadImage(str(path))
        assert np.allclose(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(original))
        assert np.allclose(saved.GetOrigin(), original.GetOrigin())
    # a user-drawn segment without a label value is refused with a clear line, nothing written
    seg.GetSegmentation().AddEmptySegment("scribble", "my own segment")
    with pytest.raises(UserError, match="has no label value"):
        logic.save_training_case(segmented["assignment"], seg, choice, case_id, root)
    assert len(list((root / case_id).glob("r*"))) == 2
    seg.GetSegmentation().RemoveSegment("scribble")


def paint(seg, segment_id, mask, reference):
    """Replace a segment's voxels as a Segment Editor effect does (an oriented labelmap, replace mode)."""
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True))
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, seg, segment_id, logic.MODE_REPLACE)


@pytest.mark.slow
def test_cancel_ends_the_process_tree_and_writes_nothing(brats_inputs, logic_env):
    inputs, _ = brats_inputs
    scene, _nodes = load_case(inputs)
    logic = WorkflowLogic(scene, logic_env)
    choice = logic.models.choice(DEMO)
    job = logic.start_segmentation(logic.guess_inputs(choice), choice, device="cpu")
    pid = job.process.process.pid
    wait_until(
        lambda: job.poll() or job.progress.stage,
        120,
        "the engine to report its first stage",
        interval=0.02,
        on_timeout=job.cancel,
    )  # cancel once the engine is working
    job.cancel()
    assert job.wait(timeout=60) == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left
    assert not job.workdir.exists()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_cancel_reaches_children_of_the_engine(tmp_path):
    from BrainSegFounderSlicerLib.runner import BackgroundProcess

    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    process = BackgroundProcess([sys.executable, "-c", script], env=dict(os.environ), grace_s=0.5).start()
    events = wait_until(
        process.poll, 30, "the engine stand-in to print its child's pid", interval=0.02, on_timeout=process.cancel
    )
    child = int(events[0]["log"]) if "log" in events[0] else int(events[0])
    process.cancel()
    process.wait(timeout=30)
    wait_until(lambda: _gone(child), 10, f"the engine's child process {child} to end after cancel")


def _gone(pid: int) -> bool:
    """No process ``pid`` is left, or only its zombie (it has ended, its parent has not reaped it)."""
    with contextlib.suppress(OSError):  # no /proc entry: the process is gone (checked below)
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_engine_error_arrives_as_one_line_with_details(brats_inputs, logic_env, tmp_path):
    inputs, _ = brats_inputs
    scene, _nodes = load_case(inputs)
    logic = WorkflowLogic(scene, logic_env)
    choice = logic.models.choice(DEMO)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    choice.path = broken
    job = logic.start_segmentation(logic.guess_inputs(choice), choice, device="cpu")
    assert job.wait(timeout=120) == "error"
    assert "\n" not in job.error
    assert "broken.pt" in job.error
    assert "command:" in job.details()
    assert "exit code: 2" in job.details()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


@pytest.mark.slow
def test_finetune_from_the_panel_plots_and_adds_a_version(segmented, train_root, tmp_path):
    """Fine-tune the demo model on saved cases in a background process, as the panel does."""
    logic, base = segmented["logic"], segmented["choice"]
    cases = save_cases(tmp_path / "cases", train_root, range(3))
    job = logic.start_finetune(
        base,
        cases,
        epochs=1,
        name="demo-ft",
        device="cpu",
        overrides={"train.steps_per_epoch": 1, "train.warmup_epochs": 0, "validation.overlap": 0, "data.cache": "none"},
    )
    assert job.wait(timeout=600) == "ok", job.error or job.details()
    assert job.registered
    assert job.registered.endswith("demo-ft.pt")
    # it trained with tcmalloc where one is installed (brainsegfounder.allocator)
    assert ("tcmalloc" in job.process.env.get("LD_PRELOAD", "")) == (tcmalloc_library() is not None)
    # the plot: a table of epochs (0 = the base model's score, 1 = after training) and two series
    table = job.chart.GetScene().GetFirstNode("Fine-tuning metrics", "vtkMRMLTableNode").GetTable()
    assert table.GetNumberOfRows() == 2
    assert table.GetColumnByName("dice").GetValue(0) > 0
    assert table.GetColumnByName("loss").GetValue(1) > 0
    assert job.chart.GetNumberOfPlotSeriesNodes() == 2
    # the new version is offered beside the registry models, with the base's inputs and labels
    choice = next(c for c in logic.model_choices() if c.key == "local:demo-ft")
    assert choice.available
    assert choice.inputs == base.inputs
    assert choice.label_schema == "brats_regions"
    # data that holds no cases gets one clear line before anything starts
    with pytest.raises(UserError, match="no training cases"):
        logic.start_finetune(base, tmp_path / "empty", epochs=1)
