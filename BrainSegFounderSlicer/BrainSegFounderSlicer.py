"""BrainSegFounderSlicer: one-click brain MRI segmentation, corrections, fine-tuning.

The Widget binds the panel to the parameter node and to the Logic's jobs, and does nothing
else. The work is in ``BrainSegFounderSlicerLib``: the workflow on an explicit scene (logic),
every background job behind one interface (jobs, setup_jobs: segment, fine-tune, install,
download, import, devices), models, training cases; a web front end uses the same Lib. The
image maths is in the engine (``brainsegfounder``), which runs in a separate process. Nothing
here imports torch or MONAI, so the module loads fast without them.
"""

import functools
import logging
import pathlib
import sys
import tempfile
import time
from typing import Annotated, ClassVar

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BrainSegFounderSlicerLib.compatibility import unsupported_reason  # imports on Slicer 5.8's Python 3.9 too

UNSUPPORTED = unsupported_reason(sys.version_info[:2], (slicer.app.majorVersion, slicer.app.minorVersion))
if UNSUPPORTED is None:  # Slicer 5.8 (Python 3.9) stops here: the panel shows UNSUPPORTED instead
    from BrainSegFounderSlicerLib.logic import WorkflowLogic
    from BrainSegFounderSlicerLib.sampledata import sample_data_source
    from BrainSegFounderSlicerLib.setup_jobs import device_choices
    from BrainSegFounderSlicerLib.terminology import load_terminology
    from BrainSegFounderSlicerLib.training import case_count, default_cases_root, pretrain_hint
else:
    WorkflowLogic, default_cases_root = object, pathlib.Path

PANEL_INPUTS = ("flair", "t1ce", "t1", "t2")  # the selectors of the panel; a model uses some of them
POLL_MS = 200


class BrainSegFounderSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BrainSegFounder"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainSegFounderSlicer developers"]
        self.parent.helpText = UNSUPPORTED or (
            "Segment glioma regions (FLAIR, T1ce, T1, T2) or stroke lesions (T1) with BrainSegFounder models: "
            "choose the model, check the inputs, click Segment. Correct the result in the Segment Editor, save it "
            "as a training case, and fine-tune the model on your cases. "
            '<a href="https://github.com/brainsegfounder/BrainSegFounderSlicer">Documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "BrainSegFounder: Cox et al., Medical Image Analysis 2024 (doi:10.1016/j.media.2024.103301). "
            "Its released weights carry their own licence (UK Biobank MTA)."
        )
        if UNSUPPORTED:
            logging.warning(UNSUPPORTED)
        else:
            slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    """Our segment terminology (enhancing tumour, infarct) and the Sample Data case."""
    load_terminology(slicer.modules.terminologies.logic())
    try:
        import SampleData
    except ImportError:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source())


@parameterNodeWrapper
class BrainSegFounderSlicerParameterNode:
    """The panel's state, saved with the scene."""

    flair: vtkMRMLScalarVolumeNode
    t1ce: vtkMRMLScalarVolumeNode
    t1: vtkMRMLScalarVolumeNode
    t2: vtkMRMLScalarVolumeNode
    model: str = "registry:brats-synthetic-demo"
    device: str = "auto"
    fast: bool = False
    uncertainty: bool = False
    convention: Annotated[str, Choice(["brats2021", "brats2023"])] = "brats2021"
    segmentation: vtkMRMLSegmentationNode
    volumeTable: vtkMRMLTableNode
    casesFolder: pathlib.Path = default_cases_root()
    caseId: str = ""
    finetuneData: pathlib.Path = default_cases_root()
    epochs: Annotated[int, WithinRange(1, 1000)] = 20
    newModelName: str = ""


class BrainSegFounderSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds widgets to the parameter node and buttons to the Logic's jobs; holds no work."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode, self._parameterNodeGuiTag, self._devicesAsked = None, None, False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSegFounderSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainSegFounderSlicerLogic()
        _fillCombo(self.ui.deviceSelector, device_choices([]))
        self.editor = slicer.qMRMLSegmentEditorWidget()
        self.editor.setMRMLScene(slicer.mrmlScene)
        self.editor.setMRMLSegmentEditorNode(self.logic.segment_editor_node())
        self.ui.editorPlaceholder.layout().addWidget(self.editor)
        view = functools.partial(JobStatusView, detailsButton=self.ui.detailsButton)
        self._views = {"finetune": view(self.ui.finetuneProgressBar, self.ui.finetuneStatusLabel)}
        self._views["install"] = view(self.ui.progressBar, self.ui.dependencyLabel)
        self._views[None] = view(self.ui.progressBar, self.ui.statusLabel)  # segment and the rest
        self._uncertainty, self._study = UncertaintyView(self.ui, self.logic), StudyView(self)
        self.ui.modelSelector.currentIndexChanged.connect(lambda _index: self._comboChanged("model"))
        self.ui.deviceSelector.currentIndexChanged.connect(lambda _index: self._comboChanged("device"))
        for name in ("Download", "Import", "Segment", "RefreshVolumes", "SaveCase", "Finetune"):
            getattr(self.ui, f"{name[0].lower()}{name[1:]}Button").clicked.connect(getattr(self, f"on{name}"))
        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.casesFolderSelector.currentPathChanged.connect(lambda *_: self._updateFolders())
        self.ui.finetuneDataSelector.currentPathChanged.connect(lambda *_: self._updateFolders())
        jobs = self.logic.jobs  # every background job: started, progressing and finished, as signals
        jobs.started.connect(lambda job: self._updateButtons())
        jobs.progress_changed.connect(lambda job: self._views.get(job.kind, self._views[None]).showProgress(job))
        jobs.finished.connect(self._onJobFinished)
        self._timer = qt.QTimer()
        self._timer.timeout.connect(jobs.poll)
        self._timer.start(POLL_MS)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self._fillModels()
        self.initializeParameterNode()
        self._checkPackages(install=False)

    # -- entering and leaving: as Slicer's Segment Editor module, no effect is left active -----
    def cleanup(self) -> None:
        self._timer.stop()
        self.logic.jobs.cancel_all()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.editor.updateWidgetFromMRML()

    def exit(self) -> None:
        self.editor.setActiveEffect(None)  # no Paint or Scissors left active in the slice views
        self.editor.removeViewObservations()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.editor.setActiveEffect(None)
        self.editor.setSegmentationNode(None)
        self.editor.removeViewObservations()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        if isinstance(node, vtkMRMLScalarVolumeNode):  # a newly loaded volume may fill an empty input
            qt.QTimer.singleShot(0, self._autoAssign)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(BrainSegFounderSlicerParameterNode(self.logic.getParameterNode()))
        self._autoAssign()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = p = inputParameterNode
        if p:
            self._parameterNodeGuiTag = p.connectGui(self.ui)
            _selectCombo(self.ui.modelSelector, p.model)
            _selectCombo(self.ui.deviceSelector, p.device)
            self.ui.casesCollapsible.collapsed = p.segmentation is None  # opens once there is a result
            self._showModel()
            self._updateFolders()

    # -- models and inputs -------------------------------------------------------------------
    def _choice(self):
        key = self.ui.modelSelector.currentData
        return self.logic.models.choice(key) if key else None

    def _fillModels(self, select=None) -> None:
        choices = [(f"{c.title}  [{c.version}]", c.key) for c in self.logic.model_choices()]
        for combo in (self.ui.modelSelector, self.ui.baseModelSelector):
            _fillCombo(combo, choices, select or (self._parameterNode.model if self._parameterNode else None))
        self._showModel()

    def _comboChanged(self, field: str) -> None:
        value = getattr(self.ui, f"{field}Selector").currentData
        if self._parameterNode and value:
            setattr(self._parameterNode, field, value)
        if field == "model":
            self._showModel()
            self._autoAssign()

    def _showModel(self) -> None:
        choice = self._choice()
        if choice is None:
            return
        self.ui.modelInfoLabel.text = choice.panel_text(PANEL_INPUTS)
        for modality in PANEL_INPUTS:
            for kind in ("Selector", "Label"):
                getattr(self.ui, f"{modality}{kind}").visible = modality in choice.inputs
        self.ui.conventionSelector.enabled = choice.label_schema == "brats_regions"
        # Fast mode only where it was measured for this model; the tooltip says what it costs
        self.ui.fastCheckBox.enabled, self.ui.fastCheckBox.toolTip = bool(choice.fast), choice.fast_summary
        if not choice.fast and self._parameterNode:
            self._parameterNode.fast = False
        self._updateButtons()

    def _autoAssign(self) -> None:
        if self._choice() is not None and self._parameterNode is not None:
            for field, value in self.logic.fill_inputs(self._choice(), self._assignment()).items():
                if field != "case_id" or not self._parameterNode.caseId:
                    setattr(self._parameterNode, "caseId" if field == "case_id" else field, value)

    def _assignment(self):
        return {m: getattr(self._parameterNode, m) for m in PANEL_INPUTS}

    # -- buttons: each starts or cancels a job of the Logic -----------------------------------
    def _checkPackages(self, install: bool, training: bool = False) -> bool:
        """True when every package is there; else offers one install (listing what) when asked."""
        plan, problem = self.logic.package_check(training)
        self.ui.dependencyLabel.text = problem
        idle = not self.logic.jobs.busy("setup")
        if not problem and idle and not self._devicesAsked:
            self._devicesAsked = bool(self.logic.start_device_query())
        elif plan and install and idle and slicer.util.confirmOkCancelDisplay(plan.summary(), "Install packages"):
            self.logic.start_install(plan, torch_installer=installTorchWithPyTorchUtils)
        return not problem

    def _start(self, failure: str, start, needs_packages: bool = False, training: bool = False, model=None) -> None:
        if licenceAccepted(self.logic, model) and (not needs_packages or self._checkPackages(True, training)):
            with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
                start()
        self._updateButtons()

    def onDownload(self) -> None:
        self._start("Could not start the download.", lambda: self.logic.start_download(self._choice()))

    def onImport(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Import a model file", "", "Models (*.pt *.pth *.ckpt)")
        if path:
            self._start("Could not import the model.", lambda: self.logic.start_import(path), needs_packages=True)

    def _cancelled(self, slot: str, label, text: str) -> bool:
        """A running job's button is its Cancel: True if it cancelled one."""
        running = self.logic.jobs.busy(slot)
        if running is not None:
            running.cancel()
            label.text = text
        return running is not None

    def onSegment(self) -> None:
        if not self._cancelled("segment", self.ui.statusLabel, "Cancelling..."):
            self._views[None].showLine("")
            p = self._parameterNode
            start = lambda: self.logic.start_segmentation(  # noqa: E731
                self._assignment(), self._choice(), p.device, p.convention, p.fast, p.segmentation, p.volumeTable,
                p.uncertainty,
            )  # fmt: skip
            self._start("Could not start the segmentation.", start, needs_packages=True, model=self._choice())

    def onFinetune(self) -> None:
        if not self._cancelled("finetune", self.ui.finetuneStatusLabel, "Stopping (the last epoch is kept)..."):
            p, replay = self._parameterNode, self.ui.replaySelector.currentPath or None
            base = self.logic.models.choice(self.ui.baseModelSelector.currentData)
            start = lambda: self.logic.start_finetune(  # noqa: E731
                base, p.finetuneData, p.epochs, replay, p.newModelName or None, p.device
            )
            self._start("Could not start fine-tuning.", start, needs_packages=True, training=True, model=base)

    def onSegmentationChanged(self, node) -> None:
        self.ui.show3DButton.setSegmentationNode(node)
        choice = self._choice()
        if node is not None and self._parameterNode is not None and choice is not None:
            self.editor.setSegmentationNode(node)
            self.editor.setSourceVolumeNode(self._assignment().get(choice.inputs[0]))
            self.ui.casesCollapsible.collapsed = False

    def onRefreshVolumes(self) -> None:
        p, choice = self._parameterNode, self._choice()
        with slicer.util.tryWithErrorDisplay("Could not compute the volumes.", waitCursor=True):
            ref = self._assignment()[choice.inputs[0]]
            p.volumeTable = self.logic.update_volume_table(p.segmentation, ref, choice, p.convention, p.volumeTable)
            self.ui.volumeTableView.setMRMLTableNode(p.volumeTable)

    def onSaveCase(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not save the training case.", waitCursor=True):
            saved = self.logic.save_training_case(
                self._assignment(), p.segmentation, self._choice(), p.caseId, p.casesFolder, p.convention
            )
            self.ui.statusLabel.text = f"Saved {saved.case_id} revision {saved.revision} in {saved.folder}."
        self._updateFolders()

    # -- what the jobs say --------------------------------------------------------------------
    def _onJobFinished(self, job) -> None:
        ok, p = job.status == "ok", self._parameterNode
        if ok and job.kind == "segment":
            p.segmentation, p.volumeTable = job.result.segmentation, job.result.table
            self.ui.volumeTableView.setMRMLTableNode(job.result.table)
            slicer.util.setSliceViewerLayers(background=job.result.reference, fit=True)
        elif ok and job.kind == "devices":
            _fillCombo(self.ui.deviceSelector, job.result, p.device if p else "auto")
        elif ok and job.kind in ("download", "import", "finetune"):
            self._fillModels(select=job.result)
        elif ok and job.kind == "install":
            if job.result.restart_required and slicer.util.confirmOkCancelDisplay(job.message + " Restart now?"):
                slicer.util.restart()
            self._checkPackages(install=False)
        self._views.get(job.kind, self._views[None]).showOutcome(job)
        self._updateButtons()

    def _updateFolders(self) -> None:
        if self._parameterNode is not None:
            n = case_count(self._parameterNode.casesFolder)
            self.ui.caseCountLabel.text = f"{n} training case{'s' if n != 1 else ''} in this folder."
            self.ui.pretrainHint.plainText = pretrain_hint(self._parameterNode.finetuneData)

    def _updateButtons(self) -> None:
        busy = {slot: self.logic.jobs.busy(slot) is not None for slot in ("segment", "finetune", "setup")}
        choice = self._choice()
        self.ui.segmentButton.text = "Cancel" if busy["segment"] else "Segment"
        self.ui.finetuneButton.text = "Stop fine-tuning" if busy["finetune"] else "Start fine-tuning"
        ready = choice is not None and not busy["setup"]
        self.ui.segmentButton.enabled = busy["segment"] or (ready and choice.available)
        self.ui.downloadButton.enabled = ready and choice.can_download
        self.ui.importButton.enabled = not busy["setup"]
        if not busy["segment"] and not busy["setup"]:
            self.ui.progressBar.value = 0


def licenceAccepted(logic, choice) -> bool:
    """True when ``choice`` (None: no model involved) may be used: its licence needs no acceptance,
    is accepted already, or the user accepts it now (asked once per model; the engine reads the
    same record)."""
    question = logic.licence_to_accept(choice) if choice is not None else None
    if question is None:
        return True
    if not slicer.util.confirmYesNoDisplay(question, windowTitle="Model licence"):
        return False
    logic.accept_licence(choice)
    return True


class UncertaintyView:
    """The uncertainty map's controls in Results: a threshold slider for the overlay and "Next
    uncertain region", shown once a segmentation arrives with a map; both act through the Logic."""

    def __init__(self, ui, logic) -> None:
        self.ui, self.logic = ui, logic
        ui.uncertaintyThresholdSlider.valueChanged.connect(self.onThreshold)
        ui.nextUncertainButton.clicked.connect(self.onNext)
        logic.jobs.finished.connect(self.onJobFinished)

    def onJobFinished(self, job) -> None:
        if job.kind == "segment" and job.status == "ok":
            self.show(job.result)

    def show(self, result) -> None:
        shown = result.uncertainty is not None
        for widget in (
            self.ui.uncertaintyThresholdLabel,
            self.ui.uncertaintyThresholdSlider,
            self.ui.nextUncertainButton,
        ):
            widget.visible = shown
        if shown:
            self.ui.uncertaintyThresholdSlider.value = self.logic.uncertain_regions.threshold()
            self.ui.nextUncertainButton.text = "Next uncertain region"

    def onThreshold(self, value: float) -> None:
        if self.logic.uncertain_regions is not None:
            self.logic.set_uncertainty_threshold(value)

    def onNext(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not find the next uncertain region.", waitCursor=True):
            region = self.logic.next_uncertain_region()
            self.ui.nextUncertainButton.text = (
                f"Next uncertain region ({region.remaining} left; this one {region.volume_ml:.2f} mL)"
                if region is not None
                else "Every uncertain region reviewed"
            )


class StudyView:
    """Load DICOM study: a folder dialog; the series the chosen model needs become its inputs
    (the Logic picks them from their headers), and which series and why is shown under the button."""

    def __init__(self, widget) -> None:
        self.widget = widget
        widget.ui.loadStudyButton.clicked.connect(self.onLoad)

    def onLoad(self) -> None:
        w, choice = self.widget, self.widget._choice()
        folder = qt.QFileDialog.getExistingDirectory(w.parent, "Load DICOM study") if choice else ""
        if not folder or w._parameterNode is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not load the DICOM study.", waitCursor=True):
            loaded = w.logic.load_study(folder, choice)
            for modality, node in loaded.nodes.items():
                if modality in PANEL_INPUTS:
                    setattr(w._parameterNode, modality, node)
            w._parameterNode.caseId = loaded.case_id
            w.ui.studyLabel.text = "\n".join(loaded.lines())
            slicer.util.setSliceViewerLayers(background=loaded.nodes[choice.inputs[0]], fit=True)


class JobStatusView:
    """A progress bar and a status line bound to the jobs that report there; an error's details
    go behind the (shared) Details button."""

    lastError: ClassVar[dict] = {"line": "", "details": ""}  # what the Details button shows: the latest error

    def __init__(self, bar, label, detailsButton) -> None:
        self.bar, self.label, self.detailsButton, self.shownChart = bar, label, detailsButton, None
        if not detailsButton.property("bound"):
            detailsButton.visible = False
            detailsButton.setProperty("bound", True)
            detailsButton.clicked.connect(
                lambda: slicer.util.errorDisplay(self.lastError["line"], detailedText=self.lastError["details"])
            )

    def showProgress(self, job) -> None:
        if job.progress.total:
            self.bar.maximum, self.bar.value = 1000, int(job.progress.fraction * 1000)
        self.label.text = job.progress.text()
        if getattr(job, "chart", None) is not None and job.chart is not self.shownChart:  # fine-tuning's plot
            slicer.modules.plots.logic().ShowChartInLayout(job.chart)
            self.shownChart = job.chart

    def showOutcome(self, job) -> None:
        if job.message:
            self.showLine(job.message, job.details() if job.status == "error" else "")

    def showLine(self, line: str, details: str = "") -> None:
        self.label.text = line
        self.detailsButton.visible = bool(details)
        if details:
            self.lastError.update(line=line, details=details)


class BrainSegFounderSlicerUnsupportedWidget(ScriptedLoadableModuleWidget):
    """The panel on a Slicer too old for the engine's packages: what to install instead."""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        message = qt.QLabel(UNSUPPORTED)
        message.wordWrap = True
        self.layout.addWidget(message)


if UNSUPPORTED:
    BrainSegFounderSlicerWidget = BrainSegFounderSlicerUnsupportedWidget


def _fillCombo(combo, items, select=None) -> None:
    """(text, data) items into a combo box without firing its signals; then select ``select``."""
    wasBlocked = combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    combo.blockSignals(wasBlocked)
    if select is not None:
        _selectCombo(combo, select)


def _selectCombo(combo, data) -> None:
    index = combo.findData(data)
    if index >= 0:
        combo.setCurrentIndex(index)


def installTorchWithPyTorchUtils(versionRequirement: str) -> bool:
    """PyTorch Utils picks the CUDA build that fits the GPU; False (then pip) if it fails."""
    try:
        import PyTorchUtils

        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=versionRequirement)
        return True
    except Exception as error:
        logging.warning(f"PyTorch Utils could not install PyTorch ({error}); using pip")
        return False


class BrainSegFounderSlicerLogic(ScriptedLoadableModuleLogic, WorkflowLogic):
    """The Lib's workflow bound to Slicer's scene (tests bind it to a slicer-core scene instead)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        WorkflowLogic.__init__(self, slicer.mrmlScene)


class BrainSegFounderSlicerTest(ScriptedLoadableModuleTest):
    """Segment the shipped synthetic case with the demo model, correct nothing, save it as a case.
    Where the engine's packages are missing (the extension build machines have no torch), the
    model part is skipped with a message.

    Run:  Slicer --no-splash --additional-module-paths BrainSegFounderSlicer \\
            --python-code "import BrainSegFounderSlicer as m; m.BrainSegFounderSlicerTest().runTest(); exit()"
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_save_case()

    def test_segment_and_save_case(self):
        if UNSUPPORTED:
            self.delayDisplay(f"Skipped: {UNSUPPORTED}")
            return
        from BrainSegFounderSlicerLib.sampledata import SAMPLE_DIR, truth_file
        from BrainSegFounderSlicerLib.selftest import model_test_skip_reason, whole_tumour_dice

        self.delayDisplay("Loading the synthetic sample case")
        source = sample_data_source()
        for fileName, nodeName in zip(source["fileNames"], source["nodeNames"], strict=True):
            slicer.util.loadVolume(str(SAMPLE_DIR / fileName), {"name": nodeName})
        logic = BrainSegFounderSlicerLogic()
        choice = logic.models.choice("registry:brats-synthetic-demo")
        assignment = logic.guess_inputs(choice)
        assert assignment["flair"].GetName() == "BrainSegFounderGlioma-t2f"
        skip = model_test_skip_reason(logic.packages_needed())
        if skip:
            self.delayDisplay(skip)
            return

        self.delayDisplay("Segmenting in a background process")
        job = logic.start_segmentation(assignment, choice, device="auto", convention="brats2023")
        deadline = time.monotonic() + 600
        while not job.poll():
            slicer.app.processEvents()  # the UI keeps running while the engine works
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert job.status == "ok", job.error
        assert job.result.segmentation.GetSegmentation().GetNumberOfSegments() == 3
        truth = slicer.util.loadLabelVolume(str(truth_file()))
        whole = whole_tumour_dice(slicer.mrmlScene, job.result.segmentation, assignment["flair"], truth)
        assert whole > 0.8  # the demo model on its synthetic kind of data

        self.delayDisplay("Saving as a training case")
        root = pathlib.Path(tempfile.mkdtemp(prefix="brainsegfounder-selftest-"))
        saved = logic.save_training_case(assignment, job.result.segmentation, choice, "selftest", root, "brats2023")
        assert saved.revision == 1
        assert case_count(root) == 1
        self.delayDisplay(f"Test passed (whole tumour Dice {whole:.3f})")
