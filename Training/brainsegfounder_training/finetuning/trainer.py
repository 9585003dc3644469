"""The fine-tuning loop: one recipe, one run folder, resumable at any moment.

Run folder::

    recipe.yaml     the resolved recipe           splits.json   train / val / replay case ids
    init.json       which weights were loaded     metrics.jsonl one JSON object per step / epoch
    state.pt        last finished epoch (model, optimiser, schedule, scaler, best so far)
    best.pt         self-describing model with the best held-out thresholded mean Dice
    summary.json    the outcome                   tensorboard/  the same metrics for TensorBoard
    learning_curves.png

Every file is written atomically, so a run killed at any moment resumes (``--resume``) from
its last finished epoch. Random state is derived from (seed, epoch) rather than carried, so
a resumed run draws the same crops and augmentations as an uninterrupted one would have.
The best model is chosen on the held-out validation split only; when the weights start
from a full model, that model's own score is the first "best", so the exported model is
never worse on the held-out cases than the one it started from.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.inference import InferenceSettings, predict_probabilities
from brainsegfounder.labels import schema as label_schema
from brainsegfounder.networks import build_network
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress

from ..harness import distributed
from ..harness.host import peak_memory_gib, seed_everything
from ..harness.initial_weights import InitReport
from ..harness.metrics_log import MetricsLog
from ..harness.optimisation import Optimisation
from ..harness.plots import learning_curves
from ..harness.run_loop import RunLoop
from .datasets import Case, check_cases, discover
from .initialise import TaskSpec, build_model, resolve_task
from .metrics import mean_dice, region_dice
from .pipeline import make_dataset, train_transforms, val_transforms
from .splits import Split, make_split

STATE_FORMAT = "brainsegfounder-train-state"


class Validator:
    """Thresholded Dice per region on whole held-out cases, through the engine's inference
    path (brain box, sliding window, gaussian blending), sharded over the DDP ranks."""

    def __init__(self, cases: List[Case], spec: TaskSpec, recipe: dict, d: distributed.Dist):
        self.schema = label_schema(spec.label_schema)
        self.mine = cases[d.rank :: d.world]
        self.n = len(cases)
        self.dataset = make_dataset(
            self.mine,
            val_transforms(self.schema, spec.orientation),
            "memory" if recipe["data"]["cache"] != "none" else "none",
            None,
            0,
        )
        v = recipe["validation"]
        self.settings = InferenceSettings(
            overlap=float(v["overlap"]),
            sw_batch_size=int(v["sw_batch_size"]),
            threshold=float(v["threshold"]),
            memory="normal",
            precision="auto" if recipe["train"]["amp"] else "fp32",
        )
        self.roi, self.d = spec.roi, d

    def __call__(self, model, progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None):
        was_training = model.training
        model.eval()
        per_case: Dict[str, Dict[str, float]] = {}
        for i in range(len(self.dataset)):
            item = self.dataset[i]
            image = np.asarray(item["image"], dtype=np.float32)
            probs, _ = predict_probabilities(model, image, self.roi, self.settings, self.d.device, cancel=cancel)
            pred = (probs > self.settings.threshold) & np.any(image != 0, axis=0)
            dice = region_dice(pred, np.asarray(item["label"]) > 0)
            per_case[item["case_id"]] = {n: float(v) for n, v in zip(self.schema.channels, dice, strict=True)}
            progress("validate", i + 1, len(self.dataset), item["case_id"])
        model.train(was_training)
        merged: Dict[str, Dict[str, float]] = {}
        for part in distributed.gather(per_case, self.d):
            merged.update(part)
        dice = {n: float(np.mean([c[n] for c in merged.values()])) for n in self.schema.channels}
        return {"dice": dice, "mean_dice": mean_dice(dice), "per_case": merged}


def make_loss(recipe: dict):
    from monai.losses import DiceCELoss, DiceLoss

    if recipe["train"]["loss"] == "dice_ce":
        return DiceCELoss(sigmoid=True)
    return DiceLoss(sigmoid=True)


def epoch_batches(dataset, recipe: dict, epoch: int, steps: int, d: distributed.Dist, seed: int):
    """``steps`` training batches for ``epoch``, drawn deterministically from (seed, epoch):
    the loader is re-made each epoch with a seeded sampler and generator, and transforms
    running in this process are re-seeded as well."""
    import torch
    from monai.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    cycle = 0
    produced = 0
    while produced < steps:
        epoch_seed = seed * 100003 + epoch * 101 + cycle
        sampler = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=epoch_seed)
        dataset.transform.set_random_state(seed=(epoch_seed * 7 + d.rank) % 2**32)
        workers = int(recipe["data"]["workers"])
        loader = DataLoader(
            dataset,
            batch_size=int(recipe["train"]["batch_size"]),
            sampler=sampler,
            num_workers=workers,
            generator=torch.Generator().manual_seed(epoch_seed + d.rank),
            pin_memory=d.device.type == "cuda",
            drop_last=False,
        )
        for batch in loader:
            yield batch
            produced += 1
            if produced >= steps:
                return
        cycle += 1


@dataclass
class FinetuneRun:
    """A started fine-tuning run: what it trains, on what, and how far it got."""

    spec: TaskSpec
    split: Split
    init_report: Optional[InitReport]
    model: Any  # the network (its state is what is saved)
    net: Any  # what steps: the network, or its DDP wrapper
    dataset: Any
    validator: Validator
    opt: Optimisation
    loss_fn: Any
    epochs: int
    steps_per_epoch: int
    log: Optional[MetricsLog] = None
    epoch: int = 0  # finished epochs
    step: int = 0  # finished steps
    best: Optional[dict] = None  # {"epoch", "mean_dice", "dice"} of best.pt
    before: Optional[dict] = None  # the starting model's held-out score, when it is a full model

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Trainer(RunLoop):
    state_format = STATE_FORMAT
    command = "finetune"

    def fit(self) -> dict:
        t_start = time.perf_counter()
        run = self._start()
        if self.resuming:
            self._resume(run)
        else:
            run.log = MetricsLog(self.run, self.d.main, None)
            self._score_start(run)
        run.model.train()
        for epoch in range(run.epoch, run.epochs):
            self._train_epoch(run, epoch)
        run.log.close()
        return self._finish(run, t_start)

    # -- set-up -------------------------------------------------------------------------
    def _data(self, spec: TaskSpec) -> Split:
        data = self.recipe["data"]
        schema = label_schema(spec.label_schema)
        # both found before either is read in full: a wrong replay path is not an error after a long check
        found = discover(data["path"], spec.modalities)
        replay = discover(data["replay"], spec.modalities) if data["replay"] else []
        cases = check_cases(found, schema, data["label_convention"], self.progress)
        if replay:
            replay = check_cases(replay, schema, data["label_convention"], self.progress)
        split = make_split(cases, data, self.seed, replay)
        splits_path = self.run / "splits.json"
        if splits_path.is_file() and self.run.read_json("splits.json") != json.loads(json.dumps(split.to_dict())):
            raise UserError(
                f"the data in {data['path']} changed since this run started (its split differs from "
                f"{splits_path}); resume with the same data or start a new run"
            )
        return split

    def _start(self) -> FinetuneRun:
        """Task, data, model and its first weights, the run's first files, optimisation."""
        recipe, d = self.recipe, self.d
        spec = resolve_task(recipe)
        split = self._data(spec)
        seed_everything(self.seed)
        if self.resuming:  # the weights come from state.pt
            model = build_network(spec.network, use_checkpoint=bool(recipe["model"]["gradient_checkpointing"]))
            init_report = None
        else:
            model, init_report = build_model(spec, recipe)
        # recipe.yaml again when resuming: a raised train.epochs is what the next resume reads
        self.write_start(
            {"splits.json": split.to_dict(), "init.json": init_report.to_dict() if init_report is not None else None}
        )
        if init_report is not None:
            self.progress("init", 1, 1, init_report.summary())
        distributed.barrier(d)
        model.to(d.device)
        net = self.wrap(model)

        train_cases = split.train + split.replay
        schema = label_schema(spec.label_schema)
        dataset = make_dataset(
            train_cases,
            train_transforms(schema, spec.orientation, spec.roi, recipe),
            recipe["data"]["cache"],
            self.run / "cache",
            int(recipe["data"]["workers"]),
        )
        validator = Validator(split.val, spec, recipe, d)
        train = recipe["train"]
        epochs = int(train["epochs"])
        per_rank = math.ceil(len(train_cases) / d.world)
        steps = int(train["steps_per_epoch"] or math.ceil(per_rank / int(train["batch_size"])))
        opt = Optimisation(model, train, d.device, int(train["warmup_epochs"]) * steps, epochs * steps)
        return FinetuneRun(
            spec=spec,
            split=split,
            init_report=init_report,
            model=model,
            net=net,
            dataset=dataset,
            validator=validator,
            opt=opt,
            loss_fn=make_loss(recipe),
            epochs=epochs,
            steps_per_epoch=steps,
        )

    def _resume(self, run: FinetuneRun) -> None:
        """Weights, optimisation and counters from state.pt; metrics after it are dropped."""
        state = self.load_state()
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state)
        run.epoch, run.step, run.best, run.before = state["epoch"], state["step"], state["best"], state.get("before")
        self.progress("resume", run.epoch, run.epochs, f"resuming after epoch {run.epoch}")
        run.log = MetricsLog(self.run, self.d.main, run.epoch)
        if run.epoch >= run.epochs:
            raise UserError(
                f"{self.run.path} already finished its {run.epochs} epochs; raise train.epochs to "
                f"train longer (e.g. train.epochs={run.epochs * 2})"
            )

    def _score_start(self, run: FinetuneRun) -> None:
        """A full starting model is scored first: "before" for corrections, and the bar to beat."""
        base = run.spec.base
        if base is None or base.is_encoder_only or run.init_report.reinitialised or self.recipe["init"]["encoder_only"]:
            return
        run.before = run.validator(run.model, self.progress, self.cancel)
        run.best = {"epoch": 0, "mean_dice": run.before["mean_dice"], "dice": run.before["dice"]}
        run.log.write(
            {
                "type": "epoch",
                "epoch": 0,
                "step": 0,
                "val_dice": run.before["dice"],
                "val_mean_dice": run.before["mean_dice"],
                "best_mean_dice": run.before["mean_dice"],
            }
        )
        self._save_best(run)

    # -- the loop -----------------------------------------------------------------------
    def _train_epoch(self, run: FinetuneRun, epoch: int) -> None:
        d, train = self.d, self.recipe["train"]
        t_epoch = time.perf_counter()
        losses = []
        for batch in epoch_batches(run.dataset, self.recipe, epoch, run.steps_per_epoch, d, self.seed):
            if self.cancelled():
                raise Cancelled(f"cancelled during epoch {epoch + 1}; {self._kept(epoch)}")
            x = batch["image"].to(d.device, non_blocking=True)
            y = batch["label"].to(d.device, non_blocking=True).float()
            run.opt.optimizer.zero_grad(set_to_none=True)
            with run.opt.autocast():
                loss = run.loss_fn(run.net(x), y)
            self.check_finite(loss, run.step + 1)
            run.opt.step(loss)
            run.step += 1
            value = distributed.mean_scalar(float(loss.item()), d)
            losses.append(value)
            if run.step % int(train["log_every"]) == 0:
                run.log.write({"type": "step", "epoch": epoch + 1, "step": run.step, "loss": value, "lr": run.opt.lr})
            self.progress("train", run.step, run.total_steps, f"epoch {epoch + 1}/{run.epochs} loss {value:.4f}")
        record = {
            "type": "epoch",
            "epoch": epoch + 1,
            "step": run.step,
            "loss": float(np.mean(losses)),
            "lr": run.opt.lr,
            "epoch_time_s": round(time.perf_counter() - t_epoch, 2),
        }
        if (epoch + 1) % int(train["val_every"]) == 0 or epoch + 1 == run.epochs:
            result = run.validator(run.model, self.progress, self.cancel)
            record.update(val_dice=result["dice"], val_mean_dice=result["mean_dice"])
            if run.best is None or result["mean_dice"] > run.best["mean_dice"]:
                run.best = {"epoch": epoch + 1, "mean_dice": result["mean_dice"], "dice": result["dice"]}
                self._save_best(run)
        record.update(best_mean_dice=run.best["mean_dice"] if run.best else None, **peak_memory_gib(d.device))
        run.log.write(record)
        run.epoch = epoch + 1
        self.save_state(
            run.model, run.opt, self._kept(epoch), epoch=run.epoch, step=run.step, best=run.best, before=run.before
        )

    def _kept(self, epoch: int) -> str:
        if epoch == 0 and not self.run.has_state:
            return "no epoch had finished, so there is nothing to resume from yet."
        return "the last finished epoch is kept in state.pt."

    # -- what it keeps ------------------------------------------------------------------
    def _save_best(self, run: FinetuneRun) -> None:
        if not self.d.main:
            return
        import torch

        recipe, spec, split, best = self.recipe, run.spec, run.split, run.best
        base = spec.base_meta
        provenance = {
            "base": (f"{base.name} {base.version}" if base else str(spec.base.path)) if spec.base else "scratch",
            "data": str(recipe["data"]["path"]),
            "replay": str(recipe["data"]["replay"] or ""),
            "run": str(self.run.path.resolve()),
            "epoch": best["epoch"],
            "val_dice": {k: round(v, 4) for k, v in best["dice"].items()},
            "val_cases": [c.case_id for c in split.val],
            "train_cases": [{"case_id": c.case_id, **c.extra} for c in split.train],
            "replay_cases": len(split.replay),
            "seed": self.seed,
        }
        if run.before is not None:
            provenance["val_dice_before"] = {k: round(v, 4) for k, v in run.before["dice"].items()}
        name = recipe["model"]["name"] or self.run.path.name
        version = f"{time.strftime('%Y%m%d')}-e{best['epoch']}"
        # Only synthetic cohorts say what they are; a model that saw nothing else says so on every run.
        synthetic = all(c.extra.get("synthetic") for c in [*split.train, *split.replay])
        meta = spec.meta(
            name,
            version,
            provenance,
            description=f"fine-tuned with brainsegfounder ({recipe['task']})",
            trained_on="synthetic" if synthetic else "real",
            spacing_mm=training_spacing([*split.train, *split.replay], spec.orientation),
        )
        dtype = torch.float16 if recipe["model"]["save_dtype"] == "float16" else None
        self.save_best(run.model, meta, dtype=dtype)

    def _finish(self, run: FinetuneRun, t_start: float) -> dict:
        before = run.before
        summary = {
            "run": str(self.run.path),
            "best_model": str(self.run / "best.pt"),
            "best": run.best,
            "before": {k: before[k] for k in ("dice", "mean_dice")} if before else None,
            "epochs": run.epochs,
            "steps": run.step,
            "train_cases": len(run.split.train),
            "replay_cases": len(run.split.replay),
            "val_cases": len(run.split.val),
            "processes": self.d.world,
            "device": str(self.d.device),
            "time_s": round(time.perf_counter() - t_start, 1),
        }
        return self.finish(summary, learning_curves, "learning_curves.png")


def training_spacing(cases, orientation: str) -> Tuple[float, float, float]:
    """The voxel size the model was trained at (the median over the training cases, along the
    network's axes): inference resamples inputs to it. Cases are used at their own voxel size."""
    from brainsegfounder.geometry import oriented_spacing

    spacings = np.array([oriented_spacing(c.image_list()[0], orientation) for c in cases])
    return tuple(round(float(v), 4) for v in np.median(spacings, axis=0))
