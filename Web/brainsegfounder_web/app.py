"""The web front end: trame-slicer's scene, views and segment editor around a :class:`WebSession`.

One server process holds one scene (one session); run one process per user behind the launcher
or reverse proxy the README describes. Background jobs are polled from an asyncio task, so the
server keeps answering while the engine runs in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Optional

from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
from trame_slicer.app.ui import SegmentEditorToolbarUI, SegmentEditorUI, ViewerLayout
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from brainsegfounder.errors import UserError
from brainsegfounder.uncertainty import UNCERTAIN_VARIANCE
from BrainSegFounderSlicerLib.models import ModelManager

from .case_files import check_upload_size, list_cases
from .finetune_card import FinetuneCard
from .job_line import JobLine
from .session import WebSession

POLL_S = 0.3  # how often running jobs are read: progress stays live, the event loop stays free


class BrainSegFounderWebApp(TrameApp):
    """Upload or pick a case, Segment (progress, Cancel), correct, save as a training case, fine-tune."""

    def __init__(
        self,
        server=None,
        cases_root: Optional[Path] = None,
        save_root: Optional[Path] = None,
        models: Optional[ModelManager] = None,
        max_upload_mb: int = 1024,
        device: str = "auto",
        finetune_overrides: Optional[dict] = None,
    ) -> None:
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self._layout = LayoutButtonLogic(self.server, self.slicer_app)
        self._editor = SegmentEditorLogic(self.server, self.slicer_app)
        self._upload_dir = tempfile.TemporaryDirectory(prefix="brainsegfounder-web-")
        self.session = WebSession(
            self.slicer_app.scene,
            self.slicer_app.volumes_logic,
            self._upload_dir.name,
            cases_root,
            save_root,
            models,
            max_upload_mb * 10**6,
            device,
            finetune_overrides,
        )
        self._job = None
        self._table_stale = False
        self._upload_parts: list = []  # the chunks of the upload under way, and their bytes
        self._upload_bytes = 0
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._on_segmentation_edited)
        self._init_state()
        self._download = JobLine(self.state, "dl", self._downloaded)
        self._finetune = FinetuneCard(self)
        self._build_ui()
        self.server.controller.on_server_ready.add(self._start_polling)

    # -- state -------------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "BrainSegFounder"
        choices = self.session.model_choices()
        s.models = self._model_items()
        s.model_key = next((c.key for c in choices if c.available), choices[0].key if choices else None)
        s.can_download = False
        s.cases = list_cases(self.session.cases_root) if self.session.cases_root else []
        s.case_pick = None
        s.volumes, s.inputs, s.model_text = [], [], ""
        s.busy, s.progress, s.progress_text = False, 0, ""
        s.error, s.details, s.message = "", "", ""
        s.volume_rows, s.has_result, s.case_id = [], False, ""
        s.licence_question, s.uncertainty, s.has_uncertainty = "", False, False
        s.uncertainty_threshold, s.uncertain_text = UNCERTAIN_VARIANCE, ""
        self.state.change("uncertainty_threshold")(self._on_threshold)
        self.state.change("model_key")(self._on_model_changed)
        self._on_model_changed(s.model_key)

    def _model_items(self) -> list:
        return [{"title": f"{c.title} ({c.status()})", "value": c.key} for c in self.session.model_choices()]

    def refresh_models(self, select: Optional[str] = None) -> None:
        """The model list read again (a download, a fine-tuned version); ``select`` becomes the chosen one."""
        self.state.models = self._model_items()
        if select and select != self.state.model_key:
            self.state.model_key = select  # the change handler chooses it
        else:
            self._on_model_changed(self.state.model_key)

    def _refresh_inputs(self) -> None:
        self.state.volumes = self.session.volume_items()
        self.state.inputs = self.session.input_rows()
        self.state.case_id = self.session.case_id

    def _on_model_changed(self, model_key=None, **_) -> None:
        if not model_key:
            return
        with self.one_line_errors():
            self.session.choose_model(model_key)
            self._show_model()
            self._refresh_inputs()

    def _show_model(self) -> None:
        choice = self.session.choice
        self.state.model_text = choice.panel_text(choice.inputs)
        self.state.licence_question = self.session.licence_question()
        self.state.can_download = choice.can_download

    def _start_download(self) -> None:
        with self.one_line_errors():
            self._download.start(self.session.start_download())

    def _downloaded(self, job) -> None:
        if job.status == "ok":
            self.refresh_models(select=job.result)
        elif job.status == "error":
            self.state.error, self.state.details = job.message, job.details()

    def _accept_licence(self) -> None:
        with self.one_line_errors():
            self.session.accept_licence()
            self._show_model()

    @contextlib.contextmanager
    def one_line_errors(self):
        """A user's mistake becomes the panel's one error line; nothing else changes."""
        self.state.error = ""
        try:
            yield
        except UserError as error:
            self.state.error, self.state.message = str(error), ""

    # -- actions -----------------------------------------------------------------------------
    async def _upload_chunk(self, files) -> None:
        """trame-slicer's chunked upload: file lists, then an empty list at the end."""
        if files:
            self._upload_bytes += sum(int(f.get("size") or 0) for f in files)
            if self._upload_bytes <= self.session.max_upload_bytes:  # past the limit: counted, not kept
                self._upload_parts.extend(files)
            return
        parts, size, self._upload_parts, self._upload_bytes = self._upload_parts, self._upload_bytes, [], 0
        with self.state, self.one_line_errors():
            check_upload_size(size, self.session.max_upload_bytes)
            self._show_loaded(self.session.load_upload(parts))

    def _pick_case(self) -> None:
        with self.one_line_errors():
            self._show_loaded(self.session.load_case(self.state.case_pick or ""))

    def _show_loaded(self, nodes) -> None:
        self._job = None
        self.state.has_result, self.state.volume_rows, self.state.message = False, [], ""
        self.state.has_uncertainty, self.state.uncertain_text = False, ""
        self.slicer_app.display_manager.show_volume(nodes[0], do_reset_views=True)
        self._refresh_inputs()
        self.state.message = "\n".join([f"Loaded {len(nodes)} volumes.", *self.session.study_lines])

    def _assign(self, modality: str, node_id: str) -> None:
        with self.one_line_errors():
            self.session.assign(modality, node_id)
            self._refresh_inputs()

    def _segment(self, uncertainty=False) -> None:
        """Segment; ``uncertainty`` is the box's value as the page has it when the button is clicked."""
        with self.one_line_errors():
            self._job = self.session.start_segmentation(uncertainty=bool(uncertainty))
            self.state.busy, self.state.progress, self.state.progress_text = True, 0, "starting"
            self.state.details, self.state.message = "", ""

    def _on_threshold(self, uncertainty_threshold=None, **_) -> None:
        if self.state.has_uncertainty and uncertainty_threshold is not None:
            with self.one_line_errors():
                self.session.logic.set_uncertainty_threshold(float(uncertainty_threshold))

    def _next_uncertain(self) -> None:
        with self.one_line_errors():
            self.state.uncertain_text = self.session.next_uncertain_region()

    def _cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _save(self) -> None:
        with self.one_line_errors():
            saved = self.session.save_training_case(self.state.case_id)
            self.state.message = f"Saved {saved.case_id} revision {saved.revision} in {saved.folder}"

    def _on_segmentation_edited(self, *_) -> None:
        self._table_stale = True  # recomputed by the poller: one update for a whole brush stroke

    # -- the poller ----------------------------------------------------------------------------
    def _start_polling(self, **_) -> None:
        asyncio.get_event_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            with self.state:
                self._poll_once()

    def _poll_once(self) -> None:
        self._download.poll()
        self._finetune.poll()
        job = self._job
        if job is not None and job.running:
            job.poll()
            progress = job.progress
            self.state.progress = round(100 * progress.fraction)
            self.state.progress_text = progress.text()
            if not job.running:
                self._job_finished(job)
        if self._table_stale and self.session.result is not None and not self.state.busy:
            self._table_stale = False
            with self.one_line_errors():
                self.state.volume_rows = self.session.volume_rows()

    def _job_finished(self, job) -> None:
        self.state.busy = False
        if job.status == "ok":
            self.session.result = job.result
            editor = self.slicer_app.segmentation_editor
            editor.set_active_segmentation(job.result.segmentation, job.result.reference)
            self.slicer_app.display_manager.show_volume(job.result.reference)
            self.state.has_result = True
            self.state.has_uncertainty = job.result.uncertainty is not None
            self.state.uncertain_text = ""
            if self.state.has_uncertainty:  # shown over the slice views, from the Logic's threshold
                self.state.uncertainty_threshold = self.session.logic.uncertain_regions.threshold()
            self.state.volume_rows = self.session.volume_rows()
            self._table_stale = False
            self.state.message, self.state.progress = job.message, 100
        elif job.status == "cancelled":
            self.state.message = job.message  # what was there stays as it was
        else:
            self.state.error = job.message
            self.state.details = job.details()

    # -- the page ------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        chunk = self.server.trigger_name(self._upload_chunk)
        with ViewerLayout(self.server, title="BrainSegFounder", is_drawer_visible=True) as self.ui:
            self.ui.drawer.width = 420
            with self.ui.drawer, html.Div(classes="pa-3", style="overflow-y: auto;"):
                self._case_card(chunk)
                self._model_card()
                self._segment_card()
                html.Div("Segments and correction", classes="text-subtitle-2 mt-3")
                self._editor_ui = SegmentEditorUI(style="min-height: 420px;")
                self._finetune.build()
            with self.ui.toolbar:
                SegmentEditorToolbarUI(editor_ui=self._editor_ui)
            with self.ui.content:
                self._layout.layout_manager.initialize_layout_grid(self.ui)
        self._editor.set_ui(self._editor_ui)
        self._layout.layout_manager.set_layout("Axial Primary")

    def _case_card(self, chunk_trigger: str) -> None:
        html.Div("Case", classes="text-subtitle-2")
        v3.VFileInput(
            label="Upload NIfTI / NRRD images, or a DICOM study (.zip, or its files)",
            multiple=True,
            density="compact",
            raw_attrs=['data-testid="upload"'],
            change=f"window.load_files_by_chunks($event.target.files, {{ trigger_name: '{chunk_trigger}' }})",
        )
        with html.Div(v_if="cases.length", classes="d-flex"):
            v3.VSelect(
                label="Case on the server",
                items=("cases",),
                v_model=("case_pick",),
                density="compact",
                raw_attrs=['data-testid="case-pick"'],
            )
            v3.VBtn("Load", click=self._pick_case, classes="ml-2 mt-1", raw_attrs=['data-testid="load-case"'])
        html.Div(
            "{{ message }}",
            v_if="message",
            classes="text-body-2 my-1",
            style="white-space: pre-line;",
            raw_attrs=['data-testid="message"'],
        )
        with html.Div(v_if="error", classes="text-error text-body-2 my-1", raw_attrs=['data-testid="error"']):
            html.Span("{{ error }}")
            with v3.VExpansionPanels(v_if="details", variant="accordion", classes="mt-1"):
                v3.VExpansionPanel(title="Details", text=("details",))

    def _model_card(self) -> None:
        html.Div("Model and inputs", classes="text-subtitle-2 mt-3")
        v3.VSelect(label="Model", items=("models",), v_model=("model_key",), density="compact")
        html.Div(
            "{{ model_text }}",
            classes="text-caption mb-2",
            style="white-space: pre-line;",
            raw_attrs=['data-testid="model-text"'],
        )
        with html.Div(v_if="can_download || dl_busy", classes="d-flex mb-1"):
            v3.VBtn(
                "Download", click=self._start_download, disabled=("dl_busy",), size="small",
                raw_attrs=['data-testid="download"'],
            )  # fmt: skip
            v3.VBtn("Pause", click=self._download.cancel, disabled=("!dl_busy",), size="small", classes="ml-2")
        v3.VProgressLinear(v_if="dl_busy", model_value=("dl_progress",), height=6, classes="mb-1")
        html.Div(
            "{{ dl_text }}", v_if="dl_text", classes="text-caption mb-1", raw_attrs=['data-testid="download-text"']
        )
        with html.Div(v_if="licence_question", classes="text-body-2 mb-2", raw_attrs=['data-testid="licence"']):
            html.Span("{{ licence_question }}")
            v3.VBtn(
                "Accept", click=self._accept_licence, size="small", classes="ml-2",
                raw_attrs=['data-testid="accept-licence"'],
            )  # fmt: skip
        v3.VSelect(
            v_for="row in inputs",
            key="row.modality",
            label=("row.label",),
            items=("volumes",),
            model_value=("row.node",),
            update_modelValue=(self._assign, "[row.modality, $event]"),
            density="compact",
            raw_attrs=[':data-testid="`input-${row.modality}`"'],
        )

    def _segment_card(self) -> None:
        v3.VCheckbox(
            label="Uncertainty map (the variance of 8 mirror flips; about 7x the time on a CPU)",
            v_model=("uncertainty",), density="compact", hide_details=True,
            raw_attrs=['data-testid="uncertainty"'],
        )  # fmt: skip
        with html.Div(classes="d-flex"):
            v3.VBtn(
                "Segment",
                click=(self._segment, "[uncertainty]"),
                disabled=("busy",),
                color="primary",
                raw_attrs=['data-testid="segment"'],
            )
            v3.VBtn(
                "Cancel", click=self._cancel, disabled=("!busy",), classes="ml-2", raw_attrs=['data-testid="cancel"']
            )
        v3.VProgressLinear(v_if="busy", model_value=("progress",), height=6, classes="mt-2")
        html.Div("{{ progress_text }}", v_if="busy", classes="text-caption", raw_attrs=['data-testid="progress"'])
        with html.Table(v_if="has_result", classes="text-body-2 mt-2", raw_attrs=['data-testid="volumes"']):
            with html.Tr():
                html.Th("Region", style="text-align: left;")
                html.Th("Labels")
                html.Th("Volume (mL)")
            with html.Tr(v_for="row in volume_rows", key="row.region"):
                html.Td("{{ row.region }}")
                html.Td("{{ row.labels }}", style="text-align: center;")
                html.Td("{{ row.volume_ml.toFixed(2) }}", style="text-align: right;")
        with html.Div(v_if="has_uncertainty", classes="mt-2", raw_attrs=['data-testid="uncertainty-tools"']):
            v3.VSlider(
                label="Uncertain from", v_model=("uncertainty_threshold",), min=0, max=0.25, step=0.005,
                thumb_label=True, density="compact", hide_details=True,
                raw_attrs=['data-testid="uncertainty-threshold"'],
            )  # fmt: skip
            v3.VBtn("Next uncertain region", click=self._next_uncertain, raw_attrs=['data-testid="next-uncertain"'])
            html.Div("{{ uncertain_text }}", classes="text-caption", raw_attrs=['data-testid="uncertain-text"'])
        with html.Div(v_if="has_result", classes="d-flex mt-2"):
            v3.VTextField(label="Case id", v_model=("case_id",), density="compact")
            v3.VBtn("Save as training case", click=self._save, classes="ml-2 mt-1", raw_attrs=['data-testid="save"'])
