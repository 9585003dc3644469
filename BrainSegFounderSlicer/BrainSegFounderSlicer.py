"""BrainSegFounderSlicer: one-click brain MRI segmentation, corrections, fine-tuning.

The Widget only wires the panel to the Logic. All the work is in ``BrainSegFounderSlicerLib``
(scene <-> files, background processes, models, training cases), which takes an explicit scene
and is tested outside Slicer on slicer-core; the image maths is in the engine
(``brainsegfounder``), which runs in a separate Python process so the UI never freezes.
Nothing here imports torch or MONAI: the module loads fast without them.
"""

import logging
import os
import pathlib
import tempfile
import threading
import time
from typing import Annotated, Optional

import numpy as np
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

from brainsegfounder.progress import CancelToken
from BrainSegFounderSlicerLib import dependencies
from BrainSegFounderSlicerLib.assignment import modality_label
from BrainSegFounderSlicerLib.logic import WorkflowLogic
from BrainSegFounderSlicerLib.models import import_command
from BrainSegFounderSlicerLib.results import label_image
from BrainSegFounderSlicerLib.runner import BackgroundProcess, python_executable
from BrainSegFounderSlicerLib.sampledata import SAMPLE_DIR, sample_data_source, truth_file
from BrainSegFounderSlicerLib.training import case_count, case_id_from, default_cases_root, pretrain_hint

PANEL_INPUTS = ("flair", "t1ce", "t1", "t2")  # the selectors of the panel; a model uses some of them
POLL_MS = 200


class BrainSegFounderSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BrainSegFounder"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BrainSegFounderSlicer developers"]
        self.parent.helpText = (
            "Segment glioma regions (FLAIR, T1ce, T1, T2) or stroke lesions (T1) with BrainSegFounder models: "
            "choose the model, check the inputs, click Segment. Correct the result in the Segment Editor, save it "
            "as a training case, and fine-tune the model on your cases. "
            '<a href="https://github.com/brainsegfounder/BrainSegFounderSlicer">Documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "BrainSegFounder: Cox et al., Medical Image Analysis 2024 (doi:10.1016/j.media.2024.103301). "
            "Its released weights carry their own licence (UK Biobank MTA)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A synthetic multimodal glioma case in the Sample Data module (shipped, no download)."""
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
    convention: Annotated[str, Choice(["brats2021", "brats2023"])] = "brats2021"
    segmentation: vtkMRMLSegmentationNode
    volumeTable: vtkMRMLTableNode
    casesFolder: pathlib.Path = default_cases_root()
    caseId: str = ""
    finetuneData: pathlib.Path = default_cases_root()
    epochs: Annotated[int, WithinRange(1, 1000)] = 20
    newModelName: str = ""


class BrainSegFounderSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._segmentJob = None
        self._finetuneJob = None
        self._auxiliaryJob = None  # (kind, work, extra): the one download, import, install or device query
        self._details = ""
        self._chartShown = False

    # -- set-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainSegFounderSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BrainSegFounderSlicerLogic()

        self.ui.deviceSelector.addItem("auto", "auto")
        self.ui.deviceSelector.addItem("CPU", "cpu")
        for convention in ("brats2021", "brats2023"):
            self.ui.conventionSelector.addItem(convention, convention)
        self._editor = self._embeddedSegmentEditor()
        self.ui.detailsButton.visible = False

        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.deviceSelector.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.conventionSelector.currentIndexChanged.connect(self.onConventionChanged)
        self.ui.downloadButton.clicked.connect(self.onDownload)
        self.ui.importButton.clicked.connect(self.onImport)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.detailsButton.clicked.connect(self.onDetails)
        self.ui.refreshVolumesButton.clicked.connect(self.onRefreshVolumes)
        self.ui.saveCaseButton.clicked.connect(self.onSaveCase)
        self.ui.finetuneButton.clicked.connect(self.onFinetune)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.casesFolderSelector.currentPathChanged.connect(lambda *_: self._updateCaseCount())
        self.ui.finetuneDataSelector.currentPathChanged.connect(lambda *_: self._updatePretrainHint())

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self._fillModels()
        self.initializeParameterNode()
        self._checkDependencies(install=False)

    def _embeddedSegmentEditor(self):
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.GetSingletonNode("BrainSegFounder", "vtkMRMLSegmentEditorNode")
        if editorNode is None:
            editorNode = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            editorNode.UnRegister(None)
            editorNode.SetSingletonTag("BrainSegFounder")
            editorNode = slicer.mrmlScene.AddNode(editorNode)
        editor.setMRMLSegmentEditorNode(editorNode)
        self.ui.editorPlaceholder.layout().addWidget(editor)
        return editor

    def cleanup(self) -> None:
        self._timer.stop()
        for job in (self._segmentJob, self._finetuneJob):
            if job is not None:
                job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
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
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._selectCombo(self.ui.modelSelector, self._parameterNode.model)
            self._selectCombo(self.ui.deviceSelector, self._parameterNode.device)
            self._selectCombo(self.ui.conventionSelector, self._parameterNode.convention)
            self._showModel()
            self._updateCaseCount()
            self._updatePretrainHint()

    # -- models and inputs -------------------------------------------------------------------
    def _choice(self):
        key = self.ui.modelSelector.currentData
        return self.logic.models.choice(key) if key else None

    def _fillModels(self, select: Optional[str] = None) -> None:
        select = select or (self._parameterNode.model if self._parameterNode else None)
        for combo in (self.ui.modelSelector, self.ui.baseModelSelector):
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for choice in self.logic.model_choices():
                combo.addItem(f"{choice.title}  [{choice.version}]", choice.key)
            combo.blockSignals(wasBlocked)
        if select:
            self._selectCombo(self.ui.modelSelector, select)
            self._selectCombo(self.ui.baseModelSelector, select)
        self._showModel()

    @staticmethod
    def _selectCombo(combo, data) -> None:
        index = combo.findData(data)
        if index >= 0:
            combo.setCurrentIndex(index)

    def onModelChanged(self, _index) -> None:
        if self._parameterNode and self.ui.modelSelector.currentData:
            self._parameterNode.model = self.ui.modelSelector.currentData
        self._showModel()
        self._autoAssign()

    def _showModel(self) -> None:
        choice = self._choice()
        if choice is None:
            return
        self.ui.modelInfoLabel.text = f"version {choice.version}; licence: {choice.license}; {choice.status()}" + (
            f"\n{choice.description}" if choice.description else ""
        )
        self.ui.downloadButton.enabled = choice.can_download and self._auxiliaryJob is None
        unsupported = [m for m in choice.inputs if m not in PANEL_INPUTS]
        for modality in PANEL_INPUTS:
            used = modality in choice.inputs
            getattr(self.ui, f"{modality}Selector").visible = used
            getattr(self.ui, f"{modality}Label").visible = used
            getattr(self.ui, f"{modality}Label").text = modality_label(modality) + ":"
        self.ui.conventionSelector.enabled = choice.label_schema == "brats_regions"
        # Fast mode only where it was measured for this model; its tooltip says what it costs.
        self.ui.fastCheckBox.enabled = bool(choice.fast)
        self.ui.fastCheckBox.toolTip = choice.fast_summary
        if not choice.fast and self._parameterNode:
            self._parameterNode.fast = False
        if unsupported:
            self.ui.modelInfoLabel.text += (
                f"\nThis panel has no selector for {', '.join(unsupported)}; "
                "use the brainsegfounder command for this model."
            )
        self._updateButtons()

    def _autoAssign(self) -> None:
        choice = self._choice()
        if choice is None or self._parameterNode is None:
            return
        keep = {m: getattr(self._parameterNode, m) for m in choice.inputs if m in PANEL_INPUTS}
        for modality, node in self.logic.guess_inputs(choice, keep).items():
            if modality in PANEL_INPUTS and node is not None and keep.get(modality) is None:
                setattr(self._parameterNode, modality, node)
        if not self._parameterNode.caseId and keep.get(choice.inputs[0]) is not None:
            self._parameterNode.caseId = case_id_from(keep[choice.inputs[0]].GetName())

    def onDeviceChanged(self, _index) -> None:
        if self._parameterNode and self.ui.deviceSelector.currentData:
            self._parameterNode.device = self.ui.deviceSelector.currentData

    def onConventionChanged(self, _index) -> None:
        if self._parameterNode and self.ui.conventionSelector.currentData:
            self._parameterNode.convention = self.ui.conventionSelector.currentData

    def _assignment(self):
        return {m: getattr(self._parameterNode, m) for m in PANEL_INPUTS}

    # -- dependencies ------------------------------------------------------------------------
    def _checkDependencies(self, install: bool, training: bool = False) -> bool:
        """True when everything is there; else offers one install (listing what) when asked."""
        try:
            plan = dependencies.plan(training=training)
        except Exception as error:  # a requirement that would replace one of Slicer's packages
            self.ui.dependencyLabel.text = str(error)
            return False
        if plan.empty:
            self.ui.dependencyLabel.text = ""
            if self.ui.deviceSelector.count <= 2 and self._auxiliaryJob is None:
                self._queryDevices()
            return True
        self.ui.dependencyLabel.text = plan.summary() + " They are installed when you first click Segment."
        if not install or not slicer.util.confirmOkCancelDisplay(plan.summary(), "BrainSegFounder: install packages"):
            return False
        if plan.torch and plan.pytorch_utils and self._installTorchWithPyTorchUtils(plan.torch):
            plan.torch = None
        requirements = ([plan.torch] if plan.torch else []) + plan.pip
        if requirements:
            constraints = pathlib.Path(tempfile.mkdtemp(prefix="brainsegfounder-pip-")) / "constraints.txt"
            constraints.write_text(plan.constraints_text())
            process = BackgroundProcess(
                dependencies.pip_command(python_executable(), requirements, constraints), env=dict(os.environ)
            ).start()
            self._auxiliaryJob = ("install", process, plan.restart_required)
            self.ui.dependencyLabel.text = "Installing " + ", ".join(requirements) + "..."
            self._updateButtons()
        elif plan.restart_required:
            self._offerRestart()
        return False

    @staticmethod
    def _installTorchWithPyTorchUtils(requirement: str) -> bool:
        """PyTorch Utils picks the CUDA build that fits the GPU; False (then pip) if it fails."""
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=requirement.replace("torch", "", 1)
            )
            return True
        except Exception as error:
            logging.warning(f"PyTorch Utils could not install PyTorch ({error}); using pip")
            return False

    @staticmethod
    def _offerRestart() -> None:
        if slicer.util.confirmOkCancelDisplay(
            "Packages were updated that Slicer had already loaded. Restart Slicer now?", "BrainSegFounder"
        ):
            slicer.util.restart()

    def _queryDevices(self) -> None:
        process = BackgroundProcess(self.logic.devices_command()).start()
        self._auxiliaryJob = ("devices", process, None)

    # -- model manager -----------------------------------------------------------------------
    def onDownload(self) -> None:
        choice = self._choice()
        state = {"done": 0, "total": 0, "error": None, "finished": False}
        token = CancelToken()

        def work():
            try:
                self.logic.models.download(
                    choice.entry.id, progress=lambda s, d, t, m="": state.update(done=d, total=t), cancel=token
                )
            except Exception as error:
                state["error"] = str(error)
            state["finished"] = True

        thread = threading.Thread(target=work, daemon=True)
        self._auxiliaryJob = ("download", state, token)
        thread.start()
        self._updateButtons()

    def onImport(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            self.parent, "Import a model file", "", "PyTorch models (*.pt *.pth *.ckpt)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not import the model.", waitCursor=True):
            entry = self.logic.models.import_known(path)
            if entry is not None:
                self._fillModels(select=f"registry:{entry.id}")
                self.ui.statusLabel.text = f"Imported {entry.name} (SHA-256 verified)."
                return
            if not self._checkDependencies(install=True):
                return
            name = pathlib.Path(path).name.split(".")[0]
            process = BackgroundProcess(import_command(path, name)).start()
            self._auxiliaryJob = ("import", process, name)
            self.ui.statusLabel.text = f"Checking {pathlib.Path(path).name}..."

    # -- segmentation ------------------------------------------------------------------------
    def onSegment(self) -> None:
        if self._segmentJob is not None:
            self._segmentJob.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        if not self._checkDependencies(install=True):
            return
        self._showError("", "")
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            p = self._parameterNode
            self._segmentJob = self.logic.start_segmentation(
                self._assignment(),
                self._choice(),
                device=p.device,
                convention=p.convention,
                fast=p.fast,
                segmentation=p.segmentation,
                table=p.volumeTable,
            )
            self.ui.statusLabel.text = "Starting the engine..."
        self._updateButtons()

    def _finishSegmentation(self, job) -> None:
        if job.status == "ok":
            p = self._parameterNode
            p.segmentation, p.volumeTable = job.segmentation, job.table
            self.ui.volumeTableView.setMRMLTableNode(job.table)
            self._editor.setSegmentationNode(job.segmentation)
            _setSourceVolume(self._editor, job.reference)
            slicer.util.setSliceViewerLayers(background=job.reference, fit=True)
            notes = "".join(f"\nNote: {note}" for note in job.notes)
            self.ui.statusLabel.text = f"Done: {job.segmentation.GetName()}.{notes}"
        elif job.status == "cancelled":
            self.ui.statusLabel.text = "Cancelled; nothing was changed."
        else:
            self._showError(job.error, job.details())

    def onSegmentationChanged(self, node) -> None:
        if node is not None and self._parameterNode is not None:
            self._editor.setSegmentationNode(node)
            reference = self._assignment().get(self._choice().inputs[0]) if self._choice() else None
            if reference is not None:
                _setSourceVolume(self._editor, reference)

    def onRefreshVolumes(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not compute the volumes.", waitCursor=True):
            reference = self._assignment()[self._choice().inputs[0]]
            p.volumeTable = self.logic.update_volume_table(
                p.segmentation, reference, self._choice(), p.convention, p.volumeTable
            )
            self.ui.volumeTableView.setMRMLTableNode(p.volumeTable)

    def _showError(self, line: str, details: str) -> None:
        self.ui.statusLabel.text = line
        self._details = details
        self.ui.detailsButton.visible = bool(details)

    def onDetails(self) -> None:
        slicer.util.errorDisplay(self.ui.statusLabel.text, detailedText=self._details)

    # -- corrections and fine-tuning ---------------------------------------------------------
    def onSaveCase(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not save the training case.", waitCursor=True):
            saved = self.logic.save_training_case(
                self._assignment(), p.segmentation, self._choice(), p.caseId, p.casesFolder, p.convention
            )
            self.ui.statusLabel.text = f"Saved {saved.case_id} revision {saved.revision} in {saved.folder}."
        self._updateCaseCount()

    def _updateCaseCount(self) -> None:
        if self._parameterNode is not None:
            n = case_count(self._parameterNode.casesFolder)
            self.ui.caseCountLabel.text = f"{n} training case{'s' if n != 1 else ''} in this folder."

    def _updatePretrainHint(self) -> None:
        if self._parameterNode is not None:
            self.ui.pretrainHint.plainText = pretrain_hint(self._parameterNode.finetuneData)

    def onFinetune(self) -> None:
        if self._finetuneJob is not None:
            self._finetuneJob.cancel()
            self.ui.finetuneStatusLabel.text = "Stopping (the last finished epoch is kept; start again to resume)..."
            return
        if not self._checkDependencies(install=True, training=True):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            base = self.logic.models.choice(self.ui.baseModelSelector.currentData)
            self._chartShown = False
            self._finetuneJob = self.logic.start_finetune(
                base,
                p.finetuneData,
                p.epochs,
                self.ui.replaySelector.currentPath or None,
                p.newModelName or None,
                device=p.device,
            )
            self.ui.finetuneStatusLabel.text = f"Fine-tuning in {self._finetuneJob.run}..."
        self._updateButtons()

    def _finishFinetune(self, job) -> None:
        if job.status == "ok":
            name = pathlib.Path(job.registered).stem if job.registered else None
            self._fillModels(select=f"local:{name}" if name else None)
            self.ui.finetuneStatusLabel.text = (job.process.final or {}).get("message", "Done.")
        elif job.status == "cancelled":
            self.ui.finetuneStatusLabel.text = f"Stopped; resume with: brainsegfounder finetune --resume {job.run}"
        else:
            self.ui.finetuneStatusLabel.text = job.error
            self._details = job.details()
            self.ui.detailsButton.visible = True

    # -- the timer: every background job is polled here, never waited on -------------------
    def _poll(self) -> None:
        if self._segmentJob is not None:
            self._showProgress(self.ui.progressBar, self.ui.statusLabel, self._segmentJob)
            if self._segmentJob.poll():
                job, self._segmentJob = self._segmentJob, None
                self._finishSegmentation(job)
                self._updateButtons()
        if self._finetuneJob is not None:
            self._showProgress(self.ui.finetuneProgressBar, self.ui.finetuneStatusLabel, self._finetuneJob)
            if self._finetuneJob.chart is not None and not self._chartShown:
                slicer.modules.plots.logic().ShowChartInLayout(self._finetuneJob.chart)
                self._chartShown = True
            if self._finetuneJob.poll():
                job, self._finetuneJob = self._finetuneJob, None
                self._finishFinetune(job)
                self._updateButtons()
        if self._auxiliaryJob is not None:
            self._pollAuxiliaryJob()

    @staticmethod
    def _showProgress(bar, label, job) -> None:
        progress = job.progress
        if progress.total:
            bar.maximum, bar.value = 1000, int(progress.fraction * 1000)
            label.text = progress.text()

    def _pollAuxiliaryJob(self) -> None:
        kind, work, extra = self._auxiliaryJob
        if kind == "download":
            if work["total"]:
                self.ui.progressBar.maximum, self.ui.progressBar.value = 1000, int(1000 * work["done"] / work["total"])
                self.ui.statusLabel.text = f"Downloading: {work['done'] / 1e6:.0f} / {work['total'] / 1e6:.0f} MB"
            if not work["finished"]:
                return
            self._auxiliaryJob = None
            self.ui.statusLabel.text = work["error"] or "Downloaded; SHA-256 verified."
            self._fillModels()
            return
        for event in work.poll():
            if kind == "install" and "log" in event:
                self.ui.dependencyLabel.text = event["log"][-200:]
        if not work.finished:
            return
        self._auxiliaryJob = None
        if kind == "devices" and work.status == "ok":
            for device in (work.final or {}).get("devices", []):
                if device["id"] != "cpu":
                    memory = f", {device['memory_gib']} GiB" if device.get("memory_gib") else ""
                    self.ui.deviceSelector.addItem(f"{device['id']}: {device['name']}{memory}", device["id"])
            self._selectCombo(self.ui.deviceSelector, self._parameterNode.device if self._parameterNode else "auto")
        elif kind == "install":
            if work.returncode == 0:
                self.ui.dependencyLabel.text = "Packages installed."
                if extra:
                    self._offerRestart()
                self._checkDependencies(install=False)
            else:
                self.ui.dependencyLabel.text = "Installing packages failed; see Details."
                self._details = work.details()
                self.ui.detailsButton.visible = True
        elif kind == "import":
            if work.status == "ok":
                self._fillModels(select=f"local:{(work.final or {}).get('name', extra)}")
                self.ui.statusLabel.text = (work.final or {}).get("message", "Imported.")
            else:
                self._showError(work.error_line(), work.details())
        self._updateButtons()

    def _updateButtons(self) -> None:
        segmenting, tuning = self._segmentJob is not None, self._finetuneJob is not None
        self.ui.segmentButton.text = "Cancel" if segmenting else "Segment"
        self.ui.finetuneButton.text = "Stop fine-tuning" if tuning else "Start fine-tuning"
        choice, idle = self._choice(), self._auxiliaryJob is None
        self.ui.segmentButton.enabled = segmenting or (choice is not None and choice.available and idle)
        self.ui.downloadButton.enabled = choice is not None and choice.can_download and idle
        self.ui.importButton.enabled = idle
        if not segmenting:
            self.ui.progressBar.value = 0


def _setSourceVolume(editor, volume) -> None:
    """Slicer 5.4 renamed master -> source volume; 5.8+ has the new name, the fallback covers forks."""
    if hasattr(editor, "setSourceVolumeNode"):
        editor.setSourceVolumeNode(volume)
    else:
        editor.setMasterVolumeNode(volume)


class BrainSegFounderSlicerLogic(ScriptedLoadableModuleLogic, WorkflowLogic):
    """The Lib's workflow bound to Slicer's scene (tests bind it to a slicer-core scene instead)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        WorkflowLogic.__init__(self, slicer.mrmlScene)


class BrainSegFounderSlicerTest(ScriptedLoadableModuleTest):
    """Segment the shipped synthetic case with the demo model, correct nothing, save it as a case.

    Run:  Slicer --no-splash --additional-module-paths BrainSegFounderSlicer \\
            --python-code "import BrainSegFounderSlicer as m; m.BrainSegFounderSlicerTest().runTest(); exit()"
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_save_case()

    def test_segment_and_save_case(self):
        import SimpleITK as sitk

        self.delayDisplay("Loading the synthetic sample case")
        source = sample_data_source()
        for fileName, nodeName in zip(source["fileNames"], source["nodeNames"], strict=True):
            slicer.util.loadVolume(str(SAMPLE_DIR / fileName), {"name": nodeName})
        logic = BrainSegFounderSlicerLogic()
        assert dependencies.plan().empty, dependencies.plan().summary()
        choice = logic.models.choice("registry:brats-synthetic-demo")
        assignment = logic.guess_inputs(choice)
        assert assignment["flair"].GetName() == "BrainSegFounderGlioma-t2f"

        self.delayDisplay("Segmenting in a background process")
        job = logic.start_segmentation(assignment, choice, device="auto", convention="brats2023")
        deadline = time.monotonic() + 600
        while not job.poll():
            slicer.app.processEvents()  # the UI keeps running while the engine works
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert job.status == "ok", job.error
        segmentation = job.segmentation.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 3

        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(str(truth_file())))
        known = {1: "Necrotic tumor core", 2: "Peritumoral edema", 3: "Enhancing tumor"}
        ours = sitk.GetArrayFromImage(label_image(slicer.mrmlScene, job.segmentation, assignment["flair"], known))
        whole = np.logical_and(ours > 0, truth > 0).sum() * 2 / ((ours > 0).sum() + (truth > 0).sum())
        assert whole > 0.8  # the demo model on its synthetic kind of data

        self.delayDisplay("Saving as a training case")
        root = pathlib.Path(tempfile.mkdtemp(prefix="brainsegfounder-selftest-"))
        saved = logic.save_training_case(assignment, job.segmentation, choice, "selftest", root, "brats2023")
        assert saved.revision == 1
        assert case_count(root) == 1
        self.delayDisplay(f"Test passed (whole tumour Dice {whole:.3f})")
