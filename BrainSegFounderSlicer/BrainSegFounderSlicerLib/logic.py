"""The panel's workflow on an explicit scene: the module's Logic is this class bound to
``slicer.mrmlScene``; tests bind it to a plain ``vtkMRMLScene`` from slicer-core.

Long work runs in background processes (:mod:`.runner`); the objects returned by
``start_*`` are polled by a GUI timer (or waited on by tests) and finish their work in the
scene when the process is done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from brainsegfounder import registry
from brainsegfounder.cases import is_case_root
from brainsegfounder.errors import UserError
from brainsegfounder.labels import schema
from brainsegfounder.names import plain_name

from .assignment import check_assignment, guess_assignment, scalar_volumes
from .models import ModelChoice, ModelManager
from .results import fill_volume_table, label_image, load_segmentation, region_rows, show_in_3d
from .runner import BackgroundProcess, engine_command
from .training import default_cases_root, finetune_command, save_training_case, update_metrics_plot
from .volumes import same_parent_transform, write_volume


@dataclass
class Progress:
    """What the panel shows while a job runs."""

    stage: str = ""
    done: int = 0
    total: int = 0
    eta_s: Optional[float] = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def text(self) -> str:
        eta = f", about {self.eta_s:.0f} s left" if self.eta_s else ""
        return f"{self.stage} {self.done}/{self.total}{eta}" + (f": {self.message}" if self.message else "")


class Job:
    """A background engine process with the panel's view of its progress."""

    def __init__(self, process: BackgroundProcess, workdir: Optional[Path] = None) -> None:
        self.process = process
        self.workdir = workdir
        self.progress = Progress()
        self.error: Optional[str] = None
        self._done = False

    def poll(self) -> bool:
        """Read new progress; True once the job is over (then see ``status`` and ``error``)."""
        if self._done:
            return True
        for event in self.process.poll():
            if "stage" in event:
                self.progress = Progress(
                    event["stage"],
                    int(event.get("done", 0)),
                    int(event.get("total", 0)),
                    event.get("eta_s"),
                    event.get("message", ""),
                )
        self.on_progress()
        if not self.process.finished:
            return False
        self.process.poll()  # the last lines and the reaping of the process group
        self._done = True
        try:
            if self.process.status == "ok":
                self.on_success()
            elif self.process.status == "error":
                self.error = self.process.error_line()
        except UserError as error:
            self.error = str(error)
        finally:
            self.cleanup()
        return True

    @property
    def status(self) -> Optional[str]:
        if not self._done:
            return None
        return "error" if self.error else self.process.status

    def details(self) -> str:
        return self.process.details()

    def cancel(self) -> None:
        self.process.cancel()

    def wait(self, timeout: Optional[float] = None) -> Optional[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"job still running after {timeout} s; cancelled")
            time.sleep(0.1)
        return self.status

    def on_progress(self) -> None:
        """Hook: new progress has been read."""

    def on_success(self) -> None:
        """Hook: the process finished with status ok."""

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class SegmentationJob(Job):
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
        super().__init__(process, workdir)
        self.logic, self.reference, self.choice, self.convention = logic, reference, choice, convention
        self.segmentation, self.table = segmentation, table
        self.notes: List[str] = []  # the engine's notes of this run (a demo model, a partial input, ...)

    def on_success(self) -> None:
        scene = self.logic.scene
        self.notes = list(json.loads((self.workdir / "summary.json").read_text()).get("notes", []))
        name = f"{self.reference.GetName()} {self.choice.title.split(':')[0]} segmentation"
        self.segmentation = load_segmentation(
            scene, self.workdir / "labels.seg.nrrd", self.reference, name, node=self.segmentation
        )
        self.segmentation.SetAttribute("BrainSegFounder.Model", self.choice.key)
        self.segmentation.SetAttribute("BrainSegFounder.ModelVersion", self.choice.version)
        self.segmentation.SetAttribute("BrainSegFounder.LabelConvention", self.convention)
        self.segmentation.SetAttribute("BrainSegFounder.Notes", "\n".join(self.notes))
        if self.logic.show_3d:
            show_in_3d(self.segmentation)
        self.table = self.logic.update_volume_table(
            self.segmentation, self.reference, self.choice, self.convention, self.table
        )


class FinetuneJob(Job):
    def __init__(self, logic: "WorkflowLogic", process: BackgroundProcess, run: Path, name: str) -> None:
        super().__init__(process)
        self.logic, self.run, self.name = logic, run, name
        self.chart = None
        self.registered: Optional[str] = None
        self._seen: Optional[int] = None

    def on_progress(self) -> None:
        metrics = self.run / "metrics.jsonl"
        stamp = metrics.stat().st_mtime_ns if metrics.is_file() else None
        if stamp is not None and stamp != self._seen:  # redraw only when the run wrote something
            self._seen = stamp
            self.chart = update_metrics_plot(self.logic.scene, self.run)

    def on_success(self) -> None:
        self.chart = update_metrics_plot(self.logic.scene, self.run)
        final = self.process.final or {}
        self.registered = (final.get("summary") or {}).get("registered")


class WorkflowLogic:
    """Segment, correct, save as training case, fine-tune: everything the panel does."""

    def __init__(self, scene, models: Optional[ModelManager] = None) -> None:
        self.scene = scene
        self.models = models or ModelManager()
        self.show_3d = True

    # -- inputs and models -------------------------------------------------------------------
    def model_choices(self) -> List[ModelChoice]:
        return self.models.choices()

    def guess_inputs(self, choice: ModelChoice, keep: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
        return guess_assignment(scalar_volumes(self.scene), choice.inputs, keep)

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
    ) -> SegmentationJob:
        """Export the inputs, start the engine; poll the returned job until it is done."""
        if not choice.available:
            raise UserError(f"{choice.title} is not on this computer yet: {choice.status()}")
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
            for modality, node in inputs.items():
                args += ["--input", f"{modality}={write_volume(node, workdir / f'{modality}.nrrd')}"]
            process = BackgroundProcess(engine_command(*args)).start()
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return SegmentationJob(
            self, process, workdir, inputs[choice.inputs[0]], choice, convention, segmentation, table
        )

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
        data = Path(data or default_cases_root())
        if not data.exists() or (data.is_dir() and not (is_case_root(data) or (data / "datalist.json").is_file())):
            raise UserError(f"no training cases in {data}; save corrected cases first (Save as training case)")
        name = plain_name(name or f"{base.key.split(':', 1)[1]}-ft", "model name")
        run = Path(run) if run else registry.home() / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        process = BackgroundProcess(finetune_command(base.path, data, run, name, epochs, replay, device, overrides))
        return FinetuneJob(self, process.start(), run, name)

    def devices_command(self) -> List[str]:
        return engine_command("devices")
