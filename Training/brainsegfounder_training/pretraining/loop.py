"""The pretraining loop: one recipe, one run folder, resumable from any saved step.

Run folder::

    recipe.yaml     the resolved recipe          subjects.json  train / validation subjects, left out
    init.json       which weights were loaded    metrics.jsonl  losses per logged step, validation
    state.pt        the last saved step (model, optimiser, schedule, scaler, best so far)
    best.pt         self-describing SSL model with the lowest validation loss of the task's
                    choice (BrainSegFounder: reconstruction L1; MAE: masked MSE; Volume Fusion:
                    its Dice + CE; a combination: the weighted sum); ``finetune --base`` and
                    stage 2 (``init.checkpoint``) take it directly
    skipped.jsonl   subjects that could not be read, with the reason
    summary.json, pretraining_curves.png, tensorboard/

The state is saved every ``train.save_every`` steps and when the run is stopped (Ctrl-C,
SIGTERM from a scheduler before pre-emption). The data stream and the corruptions are
functions of (seed, step, rank), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from brainsegfounder.checkpoints import ModelMeta, load_checkpoint
from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.modalities import canonical
from brainsegfounder.networks import ArchitectureConfig
from brainsegfounder.progress import read_jsonl
from brainsegfounder.registry import resolve_model

from ..harness import distributed
from ..harness.host import peak_memory_gib, seed_everything
from ..harness.initial_weights import InitReport, pretext_kind
from ..harness.metrics_log import MetricsLog
from ..harness.optimisation import Optimisation
from ..harness.plots import pretraining_curves
from ..harness.run_loop import RunLoop
from .data import CropStream, batches, item_seed, stream_loader
from .head import SSLHead, load_into_head
from .start_weights import backbone_config, load_start
from .subjects import Cohort, find_cohort
from .tasks import pretext_task

STATE_FORMAT = "brainsegfounder-pretrain-state"
VALIDATION_STREAM = 1_000_003  # seeds of the fixed validation crops, apart from the training stream


@dataclass
class PretrainRun:
    """A started pretraining run: its model, data streams and how far it got."""

    cohort: Cohort
    model: Any  # the task's network (its state is what is saved)
    net: Any  # what steps: the network, or its DDP wrapper
    config: Any  # the encoder's NetworkConfig
    init_ckpt: Any  # the checkpoint it started from, if any
    init_report: Optional[InitReport]
    opt: Optimisation
    total: int  # steps of the whole run
    log: Optional[MetricsLog] = None
    step: int = 0  # finished steps
    best: Optional[dict] = None  # {"step", "val_*"} of best.pt
    val_stream: Optional[CropStream] = None
    loader: Any = None
    t_log: float = 0.0  # when the last step record was written (for crops per second)
    crops_since: int = 0  # crops trained on since then, all processes together


class Pretrainer(RunLoop):
    state_format = STATE_FORMAT
    command = "pretrain"

    def __init__(self, *args, **kwargs):
        """Args: those of :class:`RunLoop`."""
        super().__init__(*args, **kwargs)
        self.modalities = [canonical(m) or m.lower() for m in self.recipe["modalities"]]
        self.task = pretext_task(self.recipe)
        self.selection = f"val_{self.task.selection}"  # the validation loss best.pt minimises
        self.pending_skips: List[dict] = []  # unreadable subjects met since the last save

    def fit(self) -> dict:
        t_start = time.perf_counter()
        run = self._start()
        self._open_streams(run)
        if not self.resuming:  # the untrained model's validation losses: where the curves start
            run.log.write({"type": "validation", "step": 0, **self.validate(run)})
        run.t_log = time.perf_counter()
        run.model.train()
        for batch in batches(run.loader):
            self._train_step(run, batch)
        run.log.close()
        return self._finish(run, t_start)

    # -- set-up -------------------------------------------------------------------------
    def _cohort(self) -> Cohort:
        path = self.run / "subjects.json"
        if self.resuming and path.is_file():  # the lists the run started with, whatever changed on disk since
            return self.run.read_json("subjects.json", Cohort.from_dict)
        return find_cohort(self.recipe["data"], self.modalities, self.seed)

    def _model(self, state: Optional[dict]):
        model_cfg = self.recipe["model"]
        if state is not None:
            config = ArchitectureConfig.from_dict(state["network"])
            init_ckpt = None
        else:
            init_ckpt = (
                pretext_kind(load_checkpoint(resolve_model(str(self.recipe["init"]["checkpoint"]))))
                if self.recipe["init"]["checkpoint"]
                else None
            )
            config = backbone_config(self.recipe, self.task, init_ckpt)
        seed_everything(self.seed)
        model = self.task.build(config, bool(model_cfg["gradient_checkpointing"]), bool(model_cfg["flash_attention"]))
        report = None
        if init_ckpt is not None and isinstance(model, SSLHead):  # BrainSegFounder's head: its own loader
            report = load_into_head(model, init_ckpt, self.modalities, self.recipe["init"]["modalities"])
        elif init_ckpt is not None:
            report = load_start(model, config, self.task, init_ckpt, self.modalities, self.recipe["init"]["modalities"])
        return model, config, report, init_ckpt

    def _start(self) -> PretrainRun:
        """Cohort, model and its first weights (or state.pt), the run's first files, optimisation."""
        import torch

        d, train = self.d, self.recipe["train"]
        cohort = self._cohort()
        state = self.load_state() if self.resuming else None
        model, config, report, init_ckpt = self._model(state)
        self.write_start(
            {"subjects.json": cohort.to_dict(), "init.json": report.to_dict() if report is not None else None}
        )
        if report is not None:
            self.progress("init", 1, 1, report.summary())
        model.to(d.device)
        total = int(train["steps"])
        opt = Optimisation(model, train, d.device, int(train["warmup_steps"]), total)
        run = PretrainRun(
            cohort=cohort,
            model=model,
            net=self.wrap(model),
            config=config,
            init_ckpt=init_ckpt,
            init_report=report,
            opt=opt,
            total=total,
        )
        torch.autograd.set_detect_anomaly(bool(train["anomaly_detection"]))
        if state is not None:
            model.load_state_dict(state["model"])
            run.opt.load_state_dict(state)
            run.step, run.best = int(state["step"]), state["best"]
            self.progress("resume", run.step, total, f"resuming after step {run.step}")
            if run.step >= total:
                raise UserError(
                    f"{self.run.path} already finished its {total} steps; raise train.steps to train "
                    f"longer (e.g. train.steps={total * 2})"
                )
        run.log = MetricsLog(self.run, d.main, run.step if state is not None else None, key="step")
        return run

    def _open_streams(self, run: PretrainRun) -> None:
        """The training stream from the run's step on, and this process's fixed validation crops."""
        recipe, d = self.recipe, self.d
        data, train = recipe["data"], recipe["train"]
        cache_dir = None
        if data["cache"] == "disk":
            cache_dir = Path(data["cache_dir"]) if data["cache_dir"] else self.run / "cache"
        roi, crops = tuple(recipe["model"]["roi"]), int(train["crops_per_volume"])
        orientation, tries = recipe["orientation"], int(data["max_tries"])
        stream = CropStream(run.cohort.train, orientation, roi, crops, cache_dir, tries)
        run.val_stream = CropStream(run.cohort.validation[d.rank :: d.world], orientation, roi, crops, cache_dir, tries)
        batch = int(train["batch_size"])
        run.loader = stream_loader(
            stream,
            batch,
            self.seed,
            run.step,
            run.total,
            d.rank,
            d.world,
            int(data["workers"]),
            pin_memory=d.device.type == "cuda",
        )
        self.progress(
            "pretrain",
            run.step,
            run.total,
            f"{len(run.cohort.train)} subjects, {crops} crops of {'x'.join(map(str, roi))} per volume, "
            f"{batch} volumes per process",
        )

    # -- the loop -----------------------------------------------------------------------
    def _train_step(self, run: PretrainRun, batch: dict) -> None:
        import torch

        d, train = self.d, self.recipe["train"]
        if self.cancelled():
            self._save_state(run)
            raise Cancelled(f"stopped at step {run.step}; its state is saved: continue with --resume {self.run.path}")
        x = batch["image"].to(d.device, non_blocking=True)
        self.pending_skips += batch["skipped"]
        rng = np.random.default_rng([self.seed, run.step, d.rank])
        generator = torch.Generator(d.device).manual_seed(item_seed(self.seed + d.rank, run.step))
        run.opt.optimizer.zero_grad(set_to_none=True)
        losses = self.task.losses(run.net, x, batch["ids"], rng, generator, run.opt.autocast)
        self.check_finite(losses.total, run.step + 1)
        run.opt.step(losses.total, run.model.parameters(), train["grad_clip"])
        run.step += 1
        run.crops_since += x.shape[0] * d.world
        last = run.step == run.total
        if run.step % int(train["log_every"]) == 0 or last:
            parts = distributed.gather(losses.values, d)
            values = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
            elapsed = time.perf_counter() - run.t_log
            run.log.write(
                {
                    "type": "step",
                    "step": run.step,
                    **values,
                    "lr": run.opt.lr,
                    "crops_per_s": round(run.crops_since / max(elapsed, 1e-9), 3),
                }
            )
            run.t_log, run.crops_since = time.perf_counter(), 0
            self.progress("pretrain", run.step, run.total, f"step {run.step}/{run.total} loss {values['loss']:.4f}")
        if run.step % int(train["val_every"]) == 0 or last:
            result = self.validate(run)
            if run.best is None or result[self.selection] < run.best[self.selection]:
                run.best = {"step": run.step, **result}
                self._save_best(run)
            run.log.write(
                {
                    "type": "validation",
                    "step": run.step,
                    **result,
                    f"best_{self.selection}": run.best[self.selection],
                    **peak_memory_gib(d.device),
                }
            )
        if run.step % int(train["save_every"]) == 0 or last:
            self._save_state(run)

    # -- validation ---------------------------------------------------------------------
    def validate(self, run: PretrainRun) -> dict:
        """The task's losses on fixed crops, corruptions, masks and fusions of this process's
        validation subjects (the same every time), averaged over all processes; contrastive
        negatives within each batch only."""
        import torch

        model, val_stream = run.model, run.val_stream
        was_training = model.training
        model.eval()
        batch = int(self.recipe["train"]["batch_size"])
        sums: Dict[str, float] = {}
        count = 0
        with torch.no_grad():
            for first in range(0, len(val_stream), batch):
                items = [
                    val_stream[(i, item_seed(self.seed + VALIDATION_STREAM, i))]
                    for i in range(first, min(first + batch, len(val_stream)))
                ]
                self.pending_skips += [s for it in items for s in it["skipped"]]
                x = torch.cat([it["image"] for it in items]).to(self.d.device)
                rng = np.random.default_rng([self.seed, VALIDATION_STREAM, first])
                generator = torch.Generator(self.d.device).manual_seed(item_seed(self.seed + VALIDATION_STREAM, first))
                ids = [it["id"] for it in items]
                values = self.task.losses(model, x, ids, rng, generator, run.opt.autocast, gather=False).values
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value * x.shape[0]
                count += x.shape[0]
                self.progress("validate", min(first + batch, len(val_stream)), len(val_stream))
        model.train(was_training)
        parts = distributed.gather((sums, count), self.d)
        total = sum(c for _, c in parts)
        if not total:
            raise UserError(
                "no validation subject could be read (see skipped.jsonl); fix them or give data.validation, then resume"
            )
        keys = sorted({k for s, _ in parts for k in s})
        return {f"val_{k}": sum(s.get(k, 0.0) for s, _ in parts) / total for k in keys}

    # -- what it keeps ------------------------------------------------------------------
    def _skipped_ids(self) -> set:
        path = self.run / "skipped.jsonl"
        return {r["id"] for r in read_jsonl(path)} if path.is_file() else set()

    def _write_skips(self) -> None:
        """All processes' newly skipped subjects, once each, into skipped.jsonl (rank 0)."""
        found = [s for part in distributed.gather(self.pending_skips, self.d) for s in part]
        self.pending_skips = []
        if not self.d.main or not found:
            return
        known = self._skipped_ids()
        new = {s["id"]: s for s in found if s["id"] not in known}
        if new:
            text = "".join(json.dumps(s) + "\n" for s in new.values())
            self.run.append_text("skipped.jsonl", text, "the last saved step is kept in state.pt.")
            self.progress(
                "skipped",
                len(known) + len(new),
                len(known) + len(new),
                f"skipped {', '.join(new)} (unreadable; listed in skipped.jsonl)",
            )

    def _save_state(self, run: PretrainRun) -> None:
        self._write_skips()
        kept = "the last saved step is kept in state.pt." if self.run.has_state else "no step was saved yet."
        self.save_state(run.model, run.opt, kept, step=run.step, network=run.config.to_dict(), best=run.best)

    def _save_best(self, run: PretrainRun) -> None:
        if not self.d.main:
            return
        recipe, best = self.recipe, run.best
        base = "scratch"
        if run.init_ckpt is not None:
            meta = run.init_ckpt.meta
            base = f"{meta.name} {meta.version}" if meta is not None else str(run.init_ckpt.path)
        elif self.resuming and (self.run / "init.json").is_file():
            base = self.run.read_json("init.json", lambda data: data["source"])
        provenance = {
            "stage": recipe["stage"],
            "base": base,
            "data": str(recipe["data"]["path"]),
            "run": str(self.run.path.resolve()),
            "step": best["step"],
            "task": self.task.name,
            f"{self.selection}": round(best[self.selection], 5),
            "train_subjects": len(run.cohort.train),
            "validation_subjects": len(run.cohort.validation),
            "seed": self.seed,
            "pretext": self.task.description,
        }
        if self.task.name.startswith("brainsegfounder"):
            provenance["val_reconstruction_l1"] = round(best["val_reconstruction"], 5)
            provenance["rotation_plane"] = self.recipe["ssl"]["rotation_plane"]
        name = recipe["model"]["name"] or self.run.path.name
        meta = ModelMeta(
            network=run.config,
            modalities=tuple(self.modalities),
            label_schema="",
            name=name,
            version=f"{time.strftime('%Y%m%d')}-s{best['step']}",
            task="ssl",
            roi_size=tuple(recipe["model"]["roi"]),
            orientation=recipe["orientation"],
            provenance=provenance,
            description=f"self-supervised stage {recipe['stage']} {self.task.name} model (brainsegfounder "
            "pretrain); fine-tune its encoder with brainsegfounder finetune --base",
        )
        self.save_best(run.model, meta)

    def _finish(self, run: PretrainRun, t_start: float) -> dict:
        cohort = run.cohort
        summary = {
            "run": str(self.run.path),
            "best_model": str(self.run / "best.pt"),
            "best": run.best,
            "steps": run.step,
            "stage": self.recipe["stage"],
            "task": self.task.name,
            "selection": self.selection,
            "selection_label": self.task.selection_label,
            "train_subjects": len(cohort.train),
            "validation_subjects": len(cohort.validation),
            "left_out": len(cohort.left_out),
            "skipped": len(self._skipped_ids()),
            "processes": self.d.world,
            "device": str(self.d.device),
            "time_s": round(time.perf_counter() - t_start, 1),
        }
        return self.finish(summary, pretraining_curves, "pretraining_curves.png")
