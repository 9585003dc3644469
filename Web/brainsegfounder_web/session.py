"""One browser session's workflow on its own scene: load a case, assign inputs, segment, correct,
save as training case. The Slicer panel's Lib does the work (:class:`WorkflowLogic` and its jobs);
this class only keeps what the session chose. No trame here: the UI binds to it in :mod:`.app`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from brainsegfounder.errors import UserError
from BrainSegFounderSlicerLib.assignment import modality_label, scalar_volumes
from BrainSegFounderSlicerLib.logic import Segmented, WorkflowLogic
from BrainSegFounderSlicerLib.models import ModelChoice, ModelManager
from BrainSegFounderSlicerLib.training import case_id_from, default_cases_root

from . import case_files


class WebSession:
    """The workflow state of one session (one scene)."""

    def __init__(
        self,
        scene,
        volumes_logic,
        upload_dir: os.PathLike,
        cases_root: Optional[os.PathLike] = None,
        save_root: Optional[os.PathLike] = None,
        models: Optional[ModelManager] = None,
        max_upload_bytes: int = case_files.DEFAULT_MAX_UPLOAD_MB * 10**6,
        device: str = "auto",
        finetune_overrides: Optional[Dict[str, str]] = None,
    ) -> None:
        self.logic = WorkflowLogic(scene, models)
        self.logic.show_3d = False  # surfaces cost seconds on a CPU server; the slice views show the result
        self.volumes_logic = volumes_logic
        self.upload_dir = Path(upload_dir)
        self.cases_root = Path(cases_root) if cases_root else None
        self.save_root = Path(save_root) if save_root else default_cases_root()
        self.max_upload_bytes = max_upload_bytes
        self.device = device
        self.finetune_overrides = dict(finetune_overrides or {})  # the server's recipe settings for runs
        self.choice: Optional[ModelChoice] = None
        self.assignment: Dict[str, object] = {}
        self.case_id = ""
        self.result: Optional[Segmented] = None
        self.study_lines: List[str] = []  # for a DICOM study: which series went to which input, and why

    @property
    def scene(self):
        return self.logic.scene

    # -- models and inputs -------------------------------------------------------------------
    def model_choices(self) -> List[ModelChoice]:
        return self.logic.model_choices()

    def choose_model(self, key: str) -> ModelChoice:
        self.choice = self.logic.models.choice(key)
        self.assignment = {m: self.assignment.get(m) for m in self.choice.inputs}
        self._guess_inputs()
        return self.choice

    def input_rows(self) -> List[Dict[str, str]]:
        """One selector per model input: its label and the chosen volume's node id ("" for none)."""
        if self.choice is None:
            return []
        return [
            {
                "modality": m,
                "label": modality_label(m),
                "node": self.assignment[m].GetID() if self.assignment.get(m) else "",
            }
            for m in self.choice.inputs
        ]

    def volume_items(self) -> List[Dict[str, str]]:
        return [{"title": n.GetName(), "value": n.GetID()} for n in scalar_volumes(self.scene)]

    def assign(self, modality: str, node_id: str) -> None:
        if self.choice is None or modality not in self.choice.inputs:
            raise UserError(f"the model has no input {modality!r}; choose a model first")
        self.assignment[modality] = self.scene.GetNodeByID(node_id) if node_id else None

    def _guess_inputs(self) -> None:
        if self.choice is None:
            return
        filled = self.logic.fill_inputs(self.choice, self.assignment)
        self.case_id = str(filled.pop("case_id", self.case_id))
        self.assignment.update(filled)

    # -- loading a case ----------------------------------------------------------------------
    def load_upload(self, files: Sequence[dict]) -> List[object]:
        """Uploaded images, or a DICOM study (a .zip or its files); refused whole, with one line,
        if any image is not readable or the study lacks a series the model needs."""
        if case_files.is_study_upload(files):
            self._need_model()
            folder = case_files.store_study_upload(files, self.upload_dir, self.max_upload_bytes)
            try:
                nodes = self._load_study(folder)
            except UserError:
                shutil.rmtree(folder, ignore_errors=True)  # a refused study leaves nothing behind
                raise
            name = str(files[0].get("name", ""))
            if len(files) == 1 and name.lower().endswith(".zip"):  # the archive's name, not "study"
                self.case_id = case_id_from(name[: -len(".zip")])
            return nodes
        paths = case_files.store_upload(files, self.upload_dir, self.max_upload_bytes)
        return self._load(paths)

    def load_case(self, case_id: str) -> List[object]:
        """A case of the server's cases folder: image files, or a DICOM study folder."""
        if self.cases_root is None:
            raise UserError("this server has no cases folder; start it with --cases DIR, or upload the images")
        folder = case_files.case_folder(self.cases_root, case_id)
        images = case_files.case_images(folder)
        return self._load(images) if images else self._load_study(folder)

    def _need_model(self) -> None:
        if self.choice is None:
            raise UserError("choose a model first: its inputs say which series of the study to load")

    def _load_study(self, folder: Path) -> List[object]:
        self._need_model()
        loaded = self.logic.load_study(folder, self.choice, replace=True)  # the scene is cleared once accepted
        self._forget_case()
        self.assignment.update(loaded.nodes)
        self.case_id, self.study_lines = loaded.case_id, loaded.lines()
        return list(loaded.nodes.values())

    def _forget_case(self) -> None:
        self.result = None
        self.assignment, self.case_id, self.study_lines = {m: None for m in self.assignment}, "", []

    def _load(self, paths: Sequence[Path]) -> List[object]:
        """A new case replaces the previous one: the session holds one case at a time."""
        self.logic.jobs.cancel_all()
        self.scene.Clear()
        self._forget_case()
        nodes = []
        for path in paths:
            node = self.volumes_logic.AddArchetypeVolume(str(path), case_files.image_stem(path.name))
            if node is None:
                self.scene.Clear()
                raise UserError(f"{path.name} could not be loaded as a volume; check the file and upload it again")
            nodes.append(node)
        if self.choice is not None:
            self.choose_model(self.choice.key)
        if not self.case_id:
            self.case_id = case_id_from(nodes[0].GetName())
        return nodes

    def licence_question(self) -> str:
        """What to ask before the chosen model's first use where its licence needs acceptance, else ""."""
        return (self.logic.licence_to_accept(self.choice) or "") if self.choice is not None else ""

    def accept_licence(self) -> None:
        if self.choice is None:
            raise UserError("choose a model first")
        self.logic.accept_licence(self.choice)
        self.choice = self.logic.models.choice(self.choice.key)  # its status, read again

    # -- segmenting, correcting, saving ------------------------------------------------------
    def start_segmentation(self, uncertainty: bool = False):
        if self.choice is None:
            raise UserError("choose a model first")
        previous = self.result
        return self.logic.start_segmentation(
            self.assignment,
            self.choice,
            device=self.device,
            segmentation=previous.segmentation if previous else None,
            table=previous.table if previous else None,
            uncertainty=uncertainty,
        )

    def next_uncertain_region(self) -> str:
        """Centre the views on the largest uncertain region not reviewed yet; what to tell the user."""
        region = self.logic.next_uncertain_region()
        if region is None:
            return "Every uncertain region has been reviewed."
        return f"Uncertain region of {region.volume_ml:.2f} mL; {region.remaining} more to review."

    def volume_rows(self) -> List[Dict[str, object]]:
        """The region volumes of the segmentation as it is now (after corrections too)."""
        if self.result is None:
            return []
        table = self.logic.update_volume_table(
            self.result.segmentation, self.result.reference, self.choice, table=self.result.table
        ).GetTable()
        return [
            {
                "region": table.GetValue(r, 0).ToString(),
                "labels": table.GetValue(r, 1).ToString(),
                "volume_ml": table.GetValue(r, 2).ToDouble(),
            }
            for r in range(table.GetNumberOfRows())
        ]

    def save_training_case(self, case_id: str):
        if self.result is None:
            raise UserError("there is no segmentation to save; run Segment first")
        return self.logic.save_training_case(
            self.assignment, self.result.segmentation, self.choice, case_id, root=self.save_root
        )

    # -- models: download, fine-tune ---------------------------------------------------------
    def start_download(self):
        """The chosen registry model into the download cache (resumable; kept only if its SHA-256 matches)."""
        if self.choice is None:
            raise UserError("choose a model first")
        return self.logic.start_download(self.choice)

    def start_finetune(self, epochs, name: str = ""):
        """Fine-tune the chosen model on the cases saved from this server; the job's result is the new model's key."""
        if self.choice is None:
            raise UserError("choose the model to fine-tune first")
        try:
            epochs = int(epochs)
        except (TypeError, ValueError):
            epochs = 0
        if not 1 <= epochs <= 1000:
            raise UserError("epochs: give a whole number from 1 to 1000")
        return self.logic.start_finetune(
            self.choice,
            self.save_root,
            epochs,
            name=(name or "").strip() or None,
            device=self.device,
            overrides=self.finetune_overrides,
        )
