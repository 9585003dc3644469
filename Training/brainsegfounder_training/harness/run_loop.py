"""What every training run has, whatever it learns: a recipe, a run folder, its processes,
progress, a cancel flag, and the files it starts with, keeps and ends with."""

from __future__ import annotations

import json
from typing import Callable, Optional

from brainsegfounder.errors import UserError
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress

from . import distributed
from .recipe import dump
from .run_folder import RunFolder, to_plain
from .state import load_state, save_best_model, save_state


class RunLoop:
    """The base of the fine-tuning and the pretraining loop.

    Args:
        recipe: the resolved recipe.
        run: the run folder; resuming: whether to continue from its state.pt.
        device: auto, cpu, cuda or cuda:N (under torchrun each process takes its own GPU).
        progress: the progress callback (rank 0 reports; the others are silent).
        cancel: checked between steps on every process; one process asked to stop stops all.
    """

    state_format = ""  # what a state.pt of this kind of run says it is
    command = ""  # the brainsegfounder command that runs it, named in errors

    def __init__(
        self,
        recipe: dict,
        run: RunFolder,
        resuming: bool,
        device: str = "auto",
        progress: ProgressCallback = null_progress,
        cancel: Optional[CancelToken] = None,
    ):
        self.recipe, self.run, self.resuming = recipe, run, resuming
        self.d = distributed.setup(device)
        self.progress = progress if self.d.main else null_progress
        self.cancel = cancel or CancelToken()
        self.seed = int(recipe["train"]["seed"])

    # -- start ------------------------------------------------------------------------------
    def write_start(self, files: dict) -> None:
        """recipe.yaml and the run's other first files ({name: JSON data}), rank 0 only. Called
        once the data and the model are known good, so a failed start leaves no files; a new run
        that cannot write them all leaves no folder either."""
        if self.d.main:
            texts = {"recipe.yaml": dump(self.recipe)}
            texts.update(
                {
                    name: json.dumps(data, indent=1, default=to_plain) + "\n"
                    for name, data in files.items()
                    if data is not None
                }
            )
            if (self.run / "recipe.yaml").is_file():  # resuming: recipe.yaml gains a raised train.epochs
                for name, text in texts.items():
                    self.run.write_text(name, text)
            else:
                self.run.write_first(texts)
        distributed.barrier(self.d)

    def wrap(self, model):
        """The model DDP trains (the model itself in one process)."""
        import torch

        if not self.d.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.d.local_rank] if self.d.device.type == "cuda" else None
        )

    # -- each step --------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return distributed.any_flag(self.cancel.cancelled, self.d)

    def check_finite(self, loss, step: int) -> None:
        import torch

        if not torch.isfinite(loss):
            raise UserError(
                f"the loss became {loss.item()} at step {step}; lower train.lr or turn off train.amp, "
                f"then --resume {self.run.path}"
            )

    # -- what the run keeps -----------------------------------------------------------------
    def load_state(self) -> dict:
        return load_state(self.run / "state.pt", self.state_format, self.command)

    def save_state(self, model, opt, kept: str, **fields) -> None:
        """state.pt = format, ``fields``, the model's weights and the optimisation's state, written by
        rank 0 (the only process that copies the weights to the CPU); every process waits for it."""
        if self.d.main:
            payload = {"format": self.state_format, **fields, "model": self.weights(model), **opt.state_dict()}
            save_state(payload, self.run / "state.pt", kept)
        distributed.barrier(self.d)

    def save_best(self, model, meta, dtype=None) -> None:
        if self.d.main:
            save_best_model(self.run / "best.pt", model, meta, dtype=dtype)

    @staticmethod
    def weights(model) -> dict:
        """The model's tensors on the CPU, for state.pt."""
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    # -- end --------------------------------------------------------------------------------
    def finish(self, summary: dict, plot: Callable, picture: str) -> dict:
        """summary.json and the curves (rank 0 writes), then leave the process group."""
        if self.d.main:
            # the run is done; a resume would only say so
            kept, then = "training finished and its model is kept in best.pt.", "read metrics.jsonl for its numbers"
            self.run.write_json("summary.json", summary, kept, then)
            with self.run.file(picture, kept, then) as tmp:
                plot(self.run / "metrics.jsonl", tmp)
        distributed.teardown(self.d)
        return summary
