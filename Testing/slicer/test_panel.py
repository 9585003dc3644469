"""The Qt panel, checked without Qt: the module file and the .ui read as text and XML.

What these cannot check (needs a real Slicer): that the panel draws, that PythonQt binds the
widgets, that the embedded Segment Editor really drops its effect. They check that the code
says so, the way Slicer's own Segment Editor module does it, and that the .ui is laid out as
the issue asks.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")  # before scenes: slicer-core imports its own modules first

from BrainSegFounderSlicerLib import dependencies  # noqa: E402
from BrainSegFounderSlicerLib.compatibility import unsupported_reason  # noqa: E402
from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.selftest import model_test_skip_reason  # noqa: E402

from scenes import DEMO, load_case, new_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "BrainSegFounderSlicer"
SOURCE = (MODULE / "BrainSegFounderSlicer.py").read_text()
TREE = ast.parse(SOURCE)
UI = ET.parse(MODULE / "Resources" / "UI" / "BrainSegFounderSlicer.ui").getroot()


def top_class(name):
    return next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == name)


def method(cls, name):
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def calls(node):
    """'editor.setActiveEffect(None)'-like texts of every call in a function."""
    return {ast.unparse(c) for c in ast.walk(node) if isinstance(c, ast.Call)}


def test_the_widget_is_a_thin_binding_layer():
    widget = top_class("BrainSegFounderSlicerWidget")
    assert widget.end_lineno - widget.lineno + 1 < 250
    text = ast.get_source_segment(SOURCE, widget)
    for word in ("threading", "Thread(", "BackgroundProcess", "subprocess", "tempfile", "pip_command", "Popen"):
        assert word not in text, word
    imported = {a.name for n in ast.walk(TREE) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(TREE) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"threading", "subprocess", "BrainSegFounderSlicerLib.runner"}
    # every job starts through the Logic
    starts = {c.split("(")[0] for c in calls(widget) if c.startswith("self.logic.start_")}
    assert starts == {
        "self.logic.start_segmentation",
        "self.logic.start_finetune",
        "self.logic.start_install",
        "self.logic.start_download",
        "self.logic.start_import",
        "self.logic.start_device_query",
    }


def test_the_module_file_loads_on_slicer_5_8_far_enough_to_say_why_not():
    """Slicer 5.8 ships Python 3.9: the module file and what it imports before its version check
    must parse there, and everything else of ours is imported only after the check."""
    compatibility = MODULE / "BrainSegFounderSlicerLib" / "compatibility.py"
    for path in (
        MODULE / "BrainSegFounderSlicer.py",
        compatibility,
        MODULE / "BrainSegFounderSlicerLib" / "__init__.py",
    ):
        ast.parse(path.read_text(), feature_version=(3, 9))
    assert "from __future__" not in compatibility.read_text()
    gate = next(n for n in TREE.body if isinstance(n, ast.If) and "UNSUPPORTED is None" in ast.unparse(n.test))
    before = TREE.body[: TREE.body.index(gate)]
    early = {n.module or "" for n in before if isinstance(n, ast.ImportFrom)}
    early |= {a.name for n in before if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in early if m.startswith(("brainsegfounder", "BrainSegFounderSlicerLib"))}
    assert ours == {"BrainSegFounderSlicerLib.compatibility"}
    assert unsupported_reason((3, 12), (5, 10)) is None
    message = unsupported_reason((3, 9), (5, 8))
    assert "needs 3D Slicer 5.10 or later (this is Slicer 5.8 with Python 3.9)" in message
    assert "MONAI 1.6" in message
    assert unsupported_reason((3, 9)) is not None


def test_leaving_the_module_or_closing_the_scene_drops_the_editor_effect():
    """As Slicer's SegmentEditor module: exit() sets no active effect and removes the view
    observations; on scene close the editor also lets go of its segmentation."""
    widget = top_class("BrainSegFounderSlicerWidget")
    assert {"self.editor.setActiveEffect(None)", "self.editor.removeViewObservations()"} <= calls(
        method(widget, "exit")
    )
    assert {
        "self.editor.setActiveEffect(None)",
        "self.editor.setSegmentationNode(None)",
        "self.editor.removeViewObservations()",
    } <= calls(method(widget, "onSceneStartClose"))
    assert "self.editor.updateWidgetFromMRML()" in calls(method(widget, "enter"))


def test_the_terminology_and_the_sample_case_are_registered_at_start_up():
    module_init = method(top_class("BrainSegFounderSlicer"), "__init__")
    assert "slicer.app.connect('startupCompleted()', onStartupCompleted)" in calls(module_init)
    startup = next(n for n in TREE.body if isinstance(n, ast.FunctionDef) and n.name == "onStartupCompleted")
    assert "load_terminology(slicer.modules.terminologies.logic())" in calls(startup)
    assert "SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source())" in calls(startup)


def sections():
    layout = UI.find("widget/layout")
    return [item.find("widget") for item in layout.findall("item") if item.find("widget") is not None]


def names_in(widget):
    return {w.get("name") for w in widget.iter("widget")}


def test_panel_order_advanced_collapsed_cases_collapsed_until_a_result():
    order = [w.get("name") for w in sections()]
    assert order == [
        "modelCollapsible",
        "inputsCollapsible",
        "advancedCollapsible",
        "segmentCollapsible",
        "resultsCollapsible",
        "editorCollapsible",
        "casesCollapsible",
        "finetuneCollapsible",
    ]
    by_name = {w.get("name"): w for w in sections()}

    def collapsed(name):
        return by_name[name].find("property[@name='collapsed']/bool").text == "true"

    assert collapsed("advancedCollapsible")
    assert {"deviceSelector", "fastCheckBox", "conventionSelector"} <= names_in(by_name["advancedCollapsible"])
    assert not {"deviceSelector", "fastCheckBox"} & names_in(by_name["modelCollapsible"])
    assert "conventionSelector" not in names_in(by_name["inputsCollapsible"])
    assert collapsed("casesCollapsible")
    widget = top_class("BrainSegFounderSlicerWidget")
    assert "self.ui.casesCollapsible.collapsed = False" in ast.get_source_segment(
        SOURCE, method(widget, "onSegmentationChanged")
    )
    # the Show 3D button is Slicer's own (qMRMLSegmentationShow3DButton), registered as a custom widget
    show3d = next(w for w in by_name["resultsCollapsible"].iter("widget") if w.get("name") == "show3DButton")
    assert show3d.get("class") == "qMRMLSegmentationShow3DButton"
    custom = {c.findtext("class"): c.findtext("extends") for c in UI.iter("customwidget")}
    assert custom["qMRMLSegmentationShow3DButton"] == "ctkMenuButton"
    assert "self.ui.show3DButton.setSegmentationNode(node)" in calls(method(widget, "onSegmentationChanged"))


def test_every_button_the_widget_connects_by_name_is_in_the_panel():
    names = {w.get("name") for w in UI.iter("widget")}
    connected = re.search(r"for name in \((.*?)\):", SOURCE).group(1)
    for name in re.findall(r'"(\w+)"', connected):
        assert f"{name[0].lower()}{name[1:]}Button" in names
        assert f"def on{name}(" in SOURCE
    # the label numbering combo is bound by the parameter node (a Choice fills it)
    bound = {
        w.get("name"): w.find("property[@name='SlicerParameterName']/string").text
        for w in UI.iter("widget")
        if w.find("property[@name='SlicerParameterName']") is not None
    }
    assert bound["conventionSelector"] == "convention"
    assert 'convention: Annotated[str, Choice(["brats2021", "brats2023"])]' in SOURCE


def test_the_self_test_skips_its_model_part_without_the_packages():
    missing = dependencies.plan(version_of={}.get, packages=[("torch", "torch", "torch>=2.8,<3")])
    reason = model_test_skip_reason(missing)
    assert reason.startswith("Skipped the segmentation part of the self-test: ")
    assert "torch>=2.8,<3" in reason
    assert model_test_skip_reason(dependencies.InstallPlan()) is None
    test = ast.get_source_segment(SOURCE, top_class("BrainSegFounderSlicerTest"))
    skip_at = test.index("skip = model_test_skip_reason(logic.packages_needed())")
    assert skip_at < test.index("logic.start_segmentation(")


# -- the helpers the Widget binds to, on slicer-core ----------------------------------------------
def test_the_panel_helpers_of_the_logic(brats_inputs, home, tmp_path):
    inputs, _ = brats_inputs
    scene, nodes = load_case(inputs)
    logic = WorkflowLogic(scene, ModelManager(cache=tmp_path / "dl"))
    choice = logic.models.choice(DEMO)
    filled = logic.fill_inputs(choice, {"t1": nodes["t1ce"]})  # the user's choice is kept
    assert "t1" not in filled
    assert filled["flair"] is nodes["flair"]
    assert filled["case_id"] == "case7"
    node = logic.segment_editor_node()
    assert node is logic.segment_editor_node()  # a singleton: reopening the panel finds the same
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 1
    assert logic.package_check() == (None, "")  # everything is installed here
    text = choice.panel_text(("flair", "t1ce"))
    assert text.startswith(f"version {choice.version}; licence: {choice.license}; ready")
    assert "no selector for t1, t2" in text
    assert WorkflowLogic(new_scene()[0]).jobs is not logic.jobs  # one job board per front end


def test_the_uncertainty_map_is_asked_for_in_advanced_and_explored_from_results():
    by_name = {w.get("name"): w for w in sections()}
    box = next(w for w in by_name["advancedCollapsible"].iter("widget") if w.get("name") == "uncertaintyCheckBox")
    assert box.find("property[@name='SlicerParameterName']/string").text == "uncertainty"
    assert "uncertainty: bool = False" in SOURCE  # the parameter node's field it binds to
    results = {w.get("name"): w for w in by_name["resultsCollapsible"].iter("widget")}
    assert results["uncertaintyThresholdSlider"].get("class") == "ctkSliderWidget"
    assert {c.findtext("class") for c in UI.iter("customwidget")} >= {"ctkSliderWidget"}
    for name in ("uncertaintyThresholdSlider", "nextUncertainButton", "uncertaintyThresholdLabel"):
        assert results[name].find("property[@name='visible']/bool").text == "false", name  # until a map arrives
    widget = top_class("BrainSegFounderSlicerWidget")
    segment = ast.get_source_segment(SOURCE, method(widget, "onSegment"))
    assert "p.uncertainty" in segment.split("start_segmentation(")[1]  # the box's value goes to the Logic
    view = top_class("UncertaintyView")
    init = calls(method(view, "__init__"))
    assert "ui.uncertaintyThresholdSlider.valueChanged.connect(self.onThreshold)" in init
    assert "ui.nextUncertainButton.clicked.connect(self.onNext)" in init
    assert "logic.jobs.finished.connect(self.onJobFinished)" in init
    assert "self.logic.set_uncertainty_threshold(value)" in calls(method(view, "onThreshold"))
    assert "self.logic.next_uncertain_region()" in calls(method(view, "onNext"))
    assert "self.show(job.result)" in calls(method(view, "onJobFinished"))
    assert "UncertaintyView(self.ui, self.logic)" in ast.get_source_segment(SOURCE, method(widget, "setup"))


def test_load_dicom_study_is_in_inputs_and_assigns_what_the_logic_loaded():
    inputs = {w.get("name"): w for w in {w.get("name"): w for w in sections()}["inputsCollapsible"].iter("widget")}
    assert inputs["loadStudyButton"].get("class") == "QPushButton"
    assert inputs["studyLabel"].find("property[@name='wordWrap']/bool").text == "true"
    view = top_class("StudyView")
    assert "widget.ui.loadStudyButton.clicked.connect(self.onLoad)" in calls(method(view, "__init__"))
    load = calls(method(view, "onLoad"))
    assert "w.logic.load_study(folder, choice)" in load  # the Lib picks and loads the series
    assert "setattr(w._parameterNode, modality, node)" in load  # ... and the panel's inputs follow
    assert any(c.startswith("slicer.util.tryWithErrorDisplay(") for c in load)  # a refused study: one line
    setup = ast.get_source_segment(SOURCE, method(top_class("BrainSegFounderSlicerWidget"), "setup"))
    assert "StudyView(self)" in setup


def test_a_model_whose_licence_must_be_accepted_is_asked_for_before_segment_or_fine_tune():
    accept = next(n for n in TREE.body if isinstance(n, ast.FunctionDef) and n.name == "licenceAccepted")
    made = calls(accept)
    assert "logic.licence_to_accept(choice)" in made
    assert "logic.accept_licence(choice)" in made
    assert any(c.startswith("slicer.util.confirmYesNoDisplay(question") for c in made)
    # accepted only on yes: the accept call comes after the early return on no
    text = ast.get_source_segment(SOURCE, accept)
    assert text.index("return False") < text.index("logic.accept_licence(choice)")
    widget = top_class("BrainSegFounderSlicerWidget")
    assert "licenceAccepted(self.logic, model)" in calls(method(widget, "_start"))
    assert "model=self._choice()" in ast.get_source_segment(SOURCE, method(widget, "onSegment"))
    assert "model=base" in ast.get_source_segment(SOURCE, method(widget, "onFinetune"))
