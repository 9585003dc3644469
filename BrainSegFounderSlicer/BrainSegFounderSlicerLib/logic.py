"""The panel's workflow on an explicit scene: the module's Logic is this class bound to
``slicer.mrmlScene``; tests bind it to a plain ``vtkMRMLScene`` from slicer-core, and a web
front end to its own scene.

Every long piece of work is a job (:mod:`.jobs`: start, poll, cancel, progress, result, error,
details) started by a ``start_*`` method and followed in ``logic.jobs``; a front end polls
``logic.jobs`` from its timer and listens to its signals. Jobs finish their work in the scene
inside ``poll()``, on the front end's thread.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from brainsegfounder import licences, registry
from brainsegfounder.allocator import with_fast_allocator
from brainsegfounder.cases import is_case_root
from brainsegfounder.errors import UserError
from brainsegfounder.labels import schema
from brainsegfounder.names import plain_name

from . import dependencies
from .assignment import check_assignment, guess_assignment, scalar_volumes
from .jobs import Jobs, ProcessJob, Progress  # noqa: F401  (Progress: for front ends)
from .models import ModelChoice, ModelManager
from .results import fill_volume_table, label_image, load_segmentation, region_rows, show_in_3d
from .runner import BackgroundProcess, engine_command, engine_environment
from .setup_jobs import DevicesJob, DownloadJob, ImportJob, InstallJob
from .studies import LoadedStudy, add_study, read_study_images
from .training import case_id_from, default_cases_root, finetune_command, save_training_case, update_metrics_plot
from .uncertain_regions import UncertainRegion, UncertainRegions, jump_to, load_uncertainty, set_threshold
from .volumes import same_parent_transform, write_volume


@dataclass(frozen=True)
class Segmented:
    """A segmentation job's result: what it put in the scene."""

    segmentation: object  # vtkMRMLSegmentationNode, on the reference input's grid
    table: object  # vtkMRMLTableNode of region volumes
    reference: object  # the reference (first) input volume
    notes: tuple  # the engine's notes of this run (a demo model, a partial input, ...)
    warnings: tuple = ()  # what the radiologist should check (registration, thick slices, an implausible result)
    uncertainty: object = None  # vtkMRMLScalarVolumeNode of the uncertainty map, if asked for


UNCERTAINTY_FILE = "uncertainty.nii.gz"


class SegmentationJob(ProcessJob):
    """``brainsegfounder segment`` on the exported inputs; the result (:class:`Segmented`) is
    loaded into the scene when the process is done, replacing ``segmentation`` if given."""

    kind = "segment"

    def __init__(
        self,
        logic: "WorkflowLogic",
        process: BackgroundProcess,
        workdir: Path,
        reference,
        choice: ModelChoice,
        convention: str,
        segmentation=None,
        table=None,
    ) -> None:
        super().__init__(process)
        self.workdir = workdir
        self.logic, self.reference, self.choice, self.convention = logic, reference, choice, convention
        self.segmentation, self.table = segmentation, table
        self.notes: List[str] = []
        self.warnings: List[str] = []
        self.uncertainty = None

    def _succeeded(self) -> Segmented:
        summary = json.loads((self.workdir / "summary.json").read_text())
        self.notes = list(summary.get("notes", []))
        self.warnings = list(summary.get("warnings", []))
        name = f"{self.reference.GetName()} {self.choice.title.split(':')[0]} segmentation"
        self.segmentation = load_segmentation(
            self.logic.scene, self.workdir / "labels.seg.nrrd", self.reference, name, node=self.segmentation
        )
        self.segmentation.SetAttribute("BrainSegFounder.Model", self.choice.key)
        self.segmentation.SetAttribute("BrainSegFounder.ModelVersion", self.choice.version)
        self.segmentation.SetAttribute("BrainSegFounder.LabelConvention", self.convention)
        self.segmentation.SetAttribute("BrainSegFounder.Notes", "\n".join(self.notes))
        self.segmentation.SetAttribute("BrainSegFounder.Warnings", "\n".join(self.warnings))
        if self.logic.show_3d:
            show_in_3d(self.segmentation)
        self.table = self.logic.update_volume_table(
            self.segmentation, self.reference, self.choice, self.convention, self.table
        )
        if (self.workdir / UNCERTAINTY_FILE).is_file():
            self.uncertainty = self.logic.load_uncertainty(
                self.workdir / UNCERTAINTY_FILE, self.reference, f"{self.segmentation.GetName()} uncertainty"
            )
        return Segmented(
            self.segmentation, self.table, self.reference, tuple(self.notes), tuple(self.warnings), self.uncertainty
        )

    def _done_message(self) -> str:
        warnings = "".join(f"\nWarning: {warning}" for warning in self.warnings)
        return f"Done: {self.segmentation.GetName()}.{warnings}" + "".join(f"\nNote: {note}" for note in self.notes)

    def _cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class FinetuneJob(ProcessJob):
    """``brainsegfounder finetune`` in the background; ``chart`` (a plot chart node of loss and
    held-out Dice) follows its ``metrics.jsonl``; the result is the new model's key."""

    kind = "finetune"

    def __init__(self, logic: "WorkflowLogic", process: BackgroundProcess, run: Path, name: str) -> None:
        super().__init__(process)
        self.logic, self.run, self.name = logic, run, name
        self.chart = None
        self.registered: Optional[str] = None  # the new model file
        self._seen: Optional[int] = None

    def _on_progress(self) -> bool:
        metrics = self.run / "metrics.jsonl"
        stamp = metrics.stat().st_mtime_ns if metrics.is_file() else None
        if stamp is None or stamp == self._seen:  # redraw only when the run wrote something
            return False
        self._seen = stamp
        self.chart = update_metrics_plot(self.logic.scene, self.run)
        return True

    def _succeeded(self) -> Optional[str]:
        self.chart = update_metrics_plot(self.logic.scene, self.run)
        self.registered = ((self.process.final or {}).get("summary") or {}).get("registered")
        return f"local:{Path(self.registered).stem}" if self.registered else None

    def _done_message(self) -> str:
        return (self.process.final or {}).get("message", "Done.")

    def _cancelled_message(self) -> str:
        return f"Stopped; resume with: brainsegfounder finetune --resume {self.run}"


class WorkflowLogic:
    """Segment, correct, save as training case, fine-tune: everything the panel does."""

    def __init__(self, scene, models: Optional[ModelManager] = None) -> None:
        self.scene = scene
        self.models = models or ModelManager()
        self.show_3d = True  # closed surfaces for the 3D view when a segmentation arrives
        self.jobs = Jobs()  # the running jobs: a front end polls them and listens to their signals
        self.uncertain_regions: Optional[UncertainRegions] = None  # of the last uncertainty map shown

    # -- inputs and models -------------------------------------------------------------------
    def model_choices(self) -> List[ModelChoice]:
        return self.models.choices()

    def licence_to_accept(self, choice: ModelChoice) -> Optional[str]:
        """What to show the user before ``choice``'s first use where its licence must be
        accepted (once per model), else None. The panel calls :meth:`accept_licence` on yes."""
        if not choice.licence_pending:
            return None
        return f"{choice.title} comes under the licence {choice.license}. Accept its terms to use it?"

    def accept_licence(self, choice: ModelChoice) -> None:
        """Remember that the user accepted ``choice``'s licence (the engine reads the same record)."""
        if choice.entry is None:
            raise UserError(f"{choice.title} is not a registry model; its licence needs no acceptance here")
        licences.accept(choice.entry.id, choice.entry.license)

    def guess_inputs(self, choice: ModelChoice, keep: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
        return guess_assignment(scalar_volumes(self.scene), choice.inputs, keep)

    def fill_inputs(self, choice: ModelChoice, current: Mapping[str, object]) -> Dict[str, object]:
        """The inputs of ``choice`` that are empty in ``current`` and can be guessed from volume
        names (the user's choices are kept), plus ``"case_id"`` from the reference volume's name."""
        keep = {m: current.get(m) for m in choice.inputs}
        guessed = self.guess_inputs(choice, keep)
        filled: Dict[str, object] = {m: n for m, n in guessed.items() if n is not None and keep.get(m) is None}
        reference = keep.get(choice.inputs[0]) or filled.get(choice.inputs[0])
        if reference is not None:
            filled["case_id"] = case_id_from(reference.GetName())
        return filled

    def load_study(self, folder: os.PathLike, choice: ModelChoice, replace: bool = False) -> LoadedStudy:
        """The series ``choice`` needs from the DICOM study in ``folder``, loaded as volumes; the
        front end assigns ``.nodes`` and shows ``.lines()`` (which series, and why). ``replace``
        clears the scene first (the web app holds one case), once the study has been accepted."""
        images = read_study_images(folder, choice.inputs)
        if replace:
            self.jobs.cancel_all()
            self.scene.Clear()
        return add_study(self.scene, folder, images)

    def package_check(self, training: bool = False) -> Tuple[Optional[dependencies.InstallPlan], str]:
        """(what to install, or None; the one line a front end shows, "" when all is there).
        A requirement that would replace a package the application ships gives no plan."""
        try:
            plan = self.packages_needed(training)
        except UserError as error:
            return None, str(error)
        return (None, "") if plan.empty else (plan, plan.summary() + " They are installed on first use.")

    def segment_editor_node(self, tag: str = "BrainSegFounder"):
        """The panel's own segment editor node (a singleton, so it survives re-opening the panel)."""
        import slicer

        node = self.scene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
        if node is None:  # made directly: a bare scene has not registered the class (slicer-core)
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag(tag)
            node = self.scene.AddNode(node)
        return node

    def packages_needed(self, training: bool = False) -> dependencies.InstallPlan:
        """What must be installed before segmenting (or fine-tuning); raises UserError where that
        would replace a package the application ships."""
        return dependencies.plan(training=training)

    # -- segmentation ------------------------------------------------------------------------
    def start_segmentation(
        self,
        assignment: Mapping[str, object],
        choice: ModelChoice,
        device: str = "auto",
        convention: str = "brats2021",
        fast: bool = False,
        segmentation=None,
        table=None,
        uncertainty: bool = False,
    ) -> SegmentationJob:
        """Export the inputs, start the engine; poll the returned job until it is done. With
        ``uncertainty`` the engine runs its 8 mirror flips and the map arrives as an overlay."""
        if not choice.available:
            raise UserError(f"{choice.title} is not on this computer yet: {choice.status()}")
        if choice.licence_pending:
            raise UserError(f"accept the licence of {choice.title} ({choice.license}) before its first use")
        inputs = check_assignment({m: assignment.get(m) for m in choice.inputs})
        same_parent_transform(list(inputs.values()))
        workdir = Path(tempfile.mkdtemp(prefix="brainsegfounder-"))
        try:
            args = [
                "segment",
                "--model",
                str(choice.path),
                "--device",
                device,
                "--output",
                workdir / "labels.nii.gz",
                "--seg-nrrd",
                workdir / "labels.seg.nrrd",
                "--summary",
                workdir / "summary.json",
            ]
            if choice.label_schema == "brats_regions":
                args += ["--labels", convention]
            if fast:
                args.append("--fast")
            if uncertainty:
                args += ["--uncertainty", workdir / UNCERTAINTY_FILE]
            for modality, node in inputs.items():
                args += ["--input", f"{modality}={write_volume(node, workdir / f'{modality}.nrrd')}"]
            job = SegmentationJob(
                self,
                BackgroundProcess(engine_command(*args)),
                workdir,
                inputs[choice.inputs[0]],
                choice,
                convention,
                segmentation,
                table,
            )
            return self.jobs.run(job)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def update_volume_table(
        self, segmentation, reference, choice: ModelChoice, convention: str = "brats2021", table=None
    ):
        """Region volumes (mL) of the segmentation as it is now (after corrections too)."""
        label_schema = schema(choice.label_schema)
        known = {v: s.name for v, s in label_schema.label_values(convention).items()}
        labels = label_image(self.scene, segmentation, reference, known)
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentation.GetName()} volumes")
        fill_volume_table(table, region_rows(labels, label_schema, convention))
        return table

    # -- where the model is unsure -----------------------------------------------------------
    def load_uncertainty(self, path: os.PathLike, reference, name: str = "uncertainty"):
        """Show an uncertainty map (``segment --uncertainty``) over the slice views; its regions
        are then offered largest first by :meth:`next_uncertain_region`."""
        previous = self.uncertain_regions.node if self.uncertain_regions else None
        reuse = previous if previous is not None and self.scene.IsNodePresent(previous) else None
        node = load_uncertainty(self.scene, path, reference, name, node=reuse)
        self.uncertain_regions = UncertainRegions(node)
        return node

    def set_uncertainty_threshold(self, threshold: float) -> None:
        """The overlay and the regions: voxels at or above ``threshold`` (0 to 0.25)."""
        if self.uncertain_regions is None:
            raise UserError("no uncertainty map is shown; segment with the uncertainty map first")
        set_threshold(self.uncertain_regions.node, threshold)

    def next_uncertain_region(self) -> Optional[UncertainRegion]:
        """Jump the slice views to the largest uncertain region not reviewed yet and return it
        (None when every region has been reviewed)."""
        if self.uncertain_regions is None:
            raise UserError("no uncertainty map is shown; segment with the uncertainty map first")
        region = self.uncertain_regions.next()
        if region is not None:
            jump_to(self.scene, region, self.uncertain_regions.node)
        return region

    # -- corrections -------------------------------------------------------------------------
    def save_training_case(
        self,
        assignment: Mapping[str, object],
        segmentation,
        choice: ModelChoice,
        case_id: str,
        root: Optional[os.PathLike] = None,
        convention: str = "brats2021",
        note: str = "",
    ):
        inputs = check_assignment({m: assignment.get(m) for m in choice.inputs})
        known = {v: s.name for v, s in schema(choice.label_schema).label_values(convention).items()}
        return save_training_case(
            self.scene,
            inputs,
            segmentation,
            root or default_cases_root(),
            case_id,
            choice.label_schema,
            known,
            convention,
            source_model={
                "key": choice.key,
                "name": choice.title,
                "version": choice.version,
                "path": str(choice.path) if choice.path else None,
            },
            note=note,
        )

    # -- fine-tuning -------------------------------------------------------------------------
    def start_finetune(
        self,
        base: ModelChoice,
        data: Optional[os.PathLike] = None,
        epochs: int = 20,
        replay: Optional[os.PathLike] = None,
        name: Optional[str] = None,
        device: str = "auto",
        run: Optional[os.PathLike] = None,
        overrides: Mapping[str, object] = (),
    ) -> FinetuneJob:
        if not base.available:
            raise UserError(f"base model {base.title} is not on this computer yet: {base.status()}")
        if base.licence_pending:
            raise UserError(f"accept the licence of {base.title} ({base.license}) before its first use")
        data = Path(data or default_cases_root())
        if not data.exists() or (data.is_dir() and not (is_case_root(data) or (data / "datalist.json").is_file())):
            raise UserError(f"no training cases in {data}; save corrected cases first (Save as training case)")
        name = plain_name(name or f"{base.key.split(':', 1)[1]}-ft", "model name")
        run = Path(run) if run else registry.home() / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        command = finetune_command(base.path, data, run, name, epochs, replay, device, overrides)
        # on the CPU, training spends a third of its time in glibc's page faults; tcmalloc spares it
        process = BackgroundProcess(command, env=with_fast_allocator(engine_environment()))
        return self.jobs.run(FinetuneJob(self, process, run, name))

    # -- getting ready: packages, models, devices --------------------------------------------
    def start_install(self, plan: dependencies.InstallPlan, torch_installer=None) -> InstallJob:
        """Install what ``plan`` lists (see :class:`.setup_jobs.InstallJob`)."""
        return self.jobs.run(InstallJob(plan, torch_installer))

    def start_download(self, choice: ModelChoice) -> DownloadJob:
        if not choice.can_download or choice.entry is None:
            raise UserError(f"{choice.title} cannot be downloaded: {choice.status()}")
        return self.jobs.run(DownloadJob(self.models, choice.entry.id))

    def start_import(self, source: os.PathLike, name: Optional[str] = None) -> ImportJob:
        if not Path(source).is_file():
            raise UserError(f"{source} is not a file; choose a model file (.pt, .pth)")
        return self.jobs.run(ImportJob(self.models, source, name))

    def start_device_query(self) -> DevicesJob:
        return self.jobs.run(DevicesJob())
