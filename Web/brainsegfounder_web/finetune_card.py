"""The page's fine-tuning card: the chosen model fine-tuned on the cases saved from this server
(the Lib's fine-tuning job, as in the Slicer panel), with a live plot of the training loss and
the held-out Dice, Stop (the last finished epoch is kept), and the new version added to the
model list when it is done."""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from BrainSegFounderSlicerLib.training import epoch_metrics

from .job_line import JobLine
from .metrics_plot import metrics_svg

DEFAULT_EPOCHS = 5


class FinetuneCard:
    def __init__(self, app) -> None:
        self.app, self.run = app, None
        app.state.ft_epochs, app.state.ft_name, app.state.ft_plot = DEFAULT_EPOCHS, "", ""
        self.line = JobLine(app.state, "ft", self._done)

    def build(self) -> None:
        html.Div("Fine-tune on the saved cases", classes="text-subtitle-2 mt-3")
        with html.Div(classes="d-flex"):
            v3.VTextField(
                label="Epochs", v_model=("ft_epochs",), type="number", density="compact",
                raw_attrs=['data-testid="ft-epochs"'],
            )  # fmt: skip
            v3.VTextField(
                label="New model name (optional)", v_model=("ft_name",), density="compact", classes="ml-2",
                raw_attrs=['data-testid="ft-name"'],
            )  # fmt: skip
        with html.Div(classes="d-flex"):
            v3.VBtn(
                "Start fine-tuning", click=(self.start, "[ft_epochs, ft_name]"), disabled=("ft_busy",),
                raw_attrs=['data-testid="ft-start"'],
            )  # fmt: skip
            v3.VBtn(
                "Stop", click=self.line.cancel, disabled=("!ft_busy",), classes="ml-2",
                raw_attrs=['data-testid="ft-stop"'],
            )  # fmt: skip
        v3.VProgressLinear(v_if="ft_busy", model_value=("ft_progress",), height=6, classes="mt-2")
        html.Div("{{ ft_text }}", classes="text-caption", raw_attrs=['data-testid="ft-text"'])
        html.Div(v_if="ft_plot", v_html=("ft_plot",), raw_attrs=['data-testid="ft-plot"'])

    def start(self, epochs, name) -> None:
        with self.app.one_line_errors():
            job = self.app.session.start_finetune(epochs, name)
            self.run = job.run
            self.app.state.ft_plot = ""
            self.line.start(job)

    def poll(self) -> None:
        self.line.poll()
        if self.run is not None:
            plot = metrics_svg(epoch_metrics(self.run))
            if plot != self.app.state.ft_plot:
                self.app.state.ft_plot = plot

    def _done(self, job) -> None:
        self.poll()  # the last epoch's points
        self.run = None
        if job.status == "ok" and job.result:
            self.app.refresh_models(select=job.result)
        elif job.status == "error":
            self.app.state.error, self.app.state.details = job.message, job.details()
