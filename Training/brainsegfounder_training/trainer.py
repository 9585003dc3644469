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

import errno
import json
import math
import resource
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from brainsegfounder.atomic import atomic_path
from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.labels import schema as label_schema
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress

from . import distributed
from .datasets import Case, check_cases, discover
from .initialise import TaskSpec, build_model, resolve_task
from .metrics import mean_dice, region_dice
from .recipe import dump, load_recipe
from .splits import Split, make_split

STATE_FORMAT = "brainsegfounder-train-state"
RESUMABLE_KEYS = ("train.epochs",)  # what may change when a run is resumed


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def has_state(self) -> bool:
        return (self.path / "state.pt").is_file()

    def write_text(self, name: str, text: str) -> None:
        with atomic_path(self.path / name, suffix=".tmp") as tmp:
            tmp.write_text(text)

    def write_json(self, name: str, data) -> None:
        self.write_text(name, json.dumps(data, indent=1, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _save_torch(payload, path: Path, kept: str) -> None:
    """``torch.save`` atomically; a full disk is one clear error and the previous file stays."""
    import torch

    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            torch.save(payload, tmp)
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise UserError(f"cannot write {path} ({reason}); {kept} Free space and continue with "
                        f"--resume {path.parent}") from None


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_run(recipe: dict, out: Optional[str], resume: Optional[str], overrides=(), load=load_recipe,
                resumable=RESUMABLE_KEYS, command: str = "finetune") -> tuple:
    """(recipe, run folder, resuming?) for a new run or a resumed one. ``load`` reads a recipe
    file with overrides; only the ``resumable`` keys may change when resuming."""
    if resume:
        run = RunFolder(Path(resume))
        if not (run / "recipe.yaml").is_file():
            raise UserError(f"{run.path} is not a run folder (no recipe.yaml); give the folder a {command} run wrote")
        for text in overrides:
            key = text.partition("=")[0].strip()
            if key not in resumable:
                raise UserError(f"{key} cannot change when resuming (only {', '.join(resumable)}); "
                                "start a new run for other settings")
        return load(str(run / "recipe.yaml"), overrides), run, run.has_state
    run = RunFolder(Path(out or recipe["output"]["dir"]))
    if run.path.exists() and any(run.path.iterdir()):
        raise UserError(f"{run.path} already holds files; continue that run with --resume {run.path} or give a "
                        "new --out folder (nothing there is overwritten)")
    return recipe, run, False


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Validator:
    """Thresholded Dice per region on whole held-out cases, through the engine's inference
    path (brain box, sliding window, gaussian blending), sharded over the DDP ranks."""

    def __init__(self, cases: List[Case], spec: TaskSpec, recipe: dict, d: distributed.Dist):
        from brainsegfounder.inference import InferenceSettings

        from .pipeline import make_dataset, val_transforms

        self.schema = label_schema(spec.label_schema)
        self.mine = cases[d.rank::d.world]
        self.n = len(cases)
        self.dataset = make_dataset(self.mine, val_transforms(self.schema, spec.orientation),
                                    "memory" if recipe["data"]["cache"] != "none" else "none", None, 0)
        v = recipe["validation"]
        self.settings = InferenceSettings(overlap=float(v["overlap"]), sw_batch_size=int(v["sw_batch_size"]),
                                          threshold=float(v["threshold"]), memory="normal",
                                          precision="auto" if recipe["train"]["amp"] else "fp32")
        self.roi, self.d = spec.roi, d

    def __call__(self, model, progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None):
        from brainsegfounder.inference import predict_probabilities

        was_training = model.training
        model.eval()
        per_case: Dict[str, Dict[str, float]] = {}
        for i in range(len(self.dataset)):
            item = self.dataset[i]
            image = np.asarray(item["image"], dtype=np.float32)
            probs, _ = predict_probabilities(model, image, self.roi, self.settings, self.d.device, cancel=cancel)
            pred = (probs > self.settings.threshold) & np.any(image != 0, axis=0)
            dice = region_dice(pred, np.asarray(item["label"]) > 0)
            per_case[item["case_id"]] = {n: float(v) for n, v in zip(self.schema.channels, dice)}
            progress("validate", i + 1, len(self.dataset), item["case_id"])
        model.train(was_training)
        merged: Dict[str, Dict[str, float]] = {}
        for part in distributed.gather(per_case, self.d):
            merged.update(part)
        dice = {n: float(np.mean([c[n] for c in merged.values()])) for n in self.schema.channels}
        return {"dice": dice, "mean_dice": mean_dice(dice), "per_case": merged}


def _peak_memory_gib(device) -> Dict[str, float]:
    import torch

    out = {"host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


class MetricsLog:
    """metrics.jsonl (what the Slicer panel plots) and TensorBoard, rank 0 only."""

    def __init__(self, run: RunFolder, enabled: bool, keep_until: Optional[int], key: str = "epoch"):
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if keep_until is not None and self.path.exists():  # drop lines written after the state that resumes
            from .plots import read_jsonl

            kept = [r for r in read_jsonl(self.path) if r.get(key, 0) <= keep_until]
            run.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"))
        except ImportError:  # TensorBoard is optional; the JSON lines carry everything
            self.writer = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_plain) + "\n")
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['type']}/{key}", value, step)
            for name, value in (record.get("val_dice") or {}).items():
                self.writer.add_scalar(f"val_dice/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _loss(recipe: dict):
    from monai.losses import DiceCELoss, DiceLoss

    if recipe["train"]["loss"] == "dice_ce":
        return DiceCELoss(sigmoid=True)
    return DiceLoss(sigmoid=True)


def _batches(dataset, recipe: dict, epoch: int, steps: int, d: distributed.Dist, seed: int):
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
        loader = DataLoader(dataset, batch_size=int(recipe["train"]["batch_size"]), sampler=sampler,
                            num_workers=workers, generator=torch.Generator().manual_seed(epoch_seed + d.rank),
                            pin_memory=d.device.type == "cuda", drop_last=False)
        for batch in loader:
            yield batch
            produced += 1
            if produced >= steps:
                return
        cycle += 1


class Optimisation:
    """AdamW with a warm-up cosine schedule per step, and AMP on CUDA (bf16 where supported,
    else fp16 with loss scaling): what fine-tuning and pretraining runs both step with."""

    def __init__(self, model, train: dict, device, warmup: int, total: int):
        import torch

        self.optimizer = torch.optim.AdamW(model.parameters(), lr=float(train["lr"]),
                                           weight_decay=float(train["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.use_amp = bool(train["amp"]) and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.use_amp)

    def step(self, loss, parameters=None, grad_clip=None) -> None:
        """Backward, optional gradient clipping, optimiser and schedule step."""
        import torch

        self.scaler.scale(loss).backward()
        if grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, float(grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class RunLoop:
    """What every training run has: a recipe, a run folder, its processes, progress and a cancel flag."""

    def __init__(self, recipe: dict, run: RunFolder, resuming: bool, device: str = "auto",
                 progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None):
        self.recipe, self.run, self.resuming = recipe, run, resuming
        self.d = distributed.setup(device)
        self.progress = progress if self.d.main else null_progress
        self.cancel = cancel or CancelToken()
        self.seed = int(recipe["train"]["seed"])

    def finish(self, summary: dict, plot, picture: str) -> dict:
        """summary.json and the curves (rank 0 writes), then leave the process group."""
        if self.d.main:
            self.run.write_json("summary.json", summary)
            plot(self.run / "metrics.jsonl", self.run / picture)
        distributed.teardown(self.d)
        return summary

    def wrap(self, model):
        """The model DDP trains (the model itself in one process)."""
        import torch

        if not self.d.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.d.local_rank] if self.d.device.type == "cuda" else None)


class Trainer(RunLoop):

    # -- set-up -------------------------------------------------------------------------
    def _data(self, spec: TaskSpec) -> Split:
        data = self.recipe["data"]
        schema = label_schema(spec.label_schema)
        cases = check_cases(discover(data["path"], spec.modalities), schema, data["label_convention"],
                            self.progress)
        replay = []
        if data["replay"]:
            replay = check_cases(discover(data["replay"], spec.modalities), schema, data["label_convention"],
                                 self.progress)
        split = make_split(cases, data, self.seed, replay)
        splits_path = self.run / "splits.json"
        if splits_path.is_file() and json.loads(splits_path.read_text()) != json.loads(
                json.dumps(split.to_dict())):
            raise UserError(f"the data in {data['path']} changed since this run started (its split differs from "
                            f"{splits_path}); resume with the same data or start a new run")
        return split

    def _write_start(self, split: Split, init_report) -> None:
        if not self.d.main:
            return
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.write_text("recipe.yaml", dump(self.recipe))
        self.run.write_json("splits.json", split.to_dict())
        if init_report is not None:
            self.run.write_json("init.json", init_report.to_dict())

    # -- the run ------------------------------------------------------------------------
    def fit(self) -> dict:
        import torch

        from .pipeline import make_dataset, train_transforms

        recipe, d = self.recipe, self.d
        t_start = time.perf_counter()
        spec = resolve_task(recipe)
        schema = label_schema(spec.label_schema)
        split = self._data(spec)
        _seed_everything(self.seed)
        model, init_report = build_model(spec, recipe) if not self.resuming else (
            build_model_empty(spec, recipe), None)
        self._write_start(split, init_report)
        if init_report is not None:
            self.progress("init", 1, 1, init_report.summary())
        distributed.barrier(d)
        model.to(d.device)
        net = self.wrap(model)

        train_cases = split.train + split.replay
        cache = recipe["data"]["cache"]
        dataset = make_dataset(train_cases, train_transforms(schema, spec.orientation, spec.roi, recipe), cache,
                               self.run / "cache", int(recipe["data"]["workers"]))
        validator = Validator(split.val, spec, recipe, d)
        epochs = int(recipe["train"]["epochs"])
        per_rank = math.ceil(len(train_cases) / d.world)
        steps = int(recipe["train"]["steps_per_epoch"] or math.ceil(per_rank / int(recipe["train"]["batch_size"])))
        total = epochs * steps
        warmup = int(recipe["train"]["warmup_epochs"]) * steps
        opt = Optimisation(model, recipe["train"], d.device, warmup, total)
        loss_fn = _loss(recipe)

        start_epoch, step, best, before = 0, 0, None, None
        if self.resuming:
            state = load_state(self.run / "state.pt")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state)
            start_epoch, step, best, before = state["epoch"], state["step"], state["best"], state.get("before")
            self.progress("resume", start_epoch, epochs, f"resuming after epoch {start_epoch}")
        log = MetricsLog(self.run, d.main, start_epoch if self.resuming else None)
        if self.resuming and start_epoch >= epochs:
            raise UserError(f"{self.run.path} already finished its {epochs} epochs; raise train.epochs to "
                            "train longer (e.g. train.epochs=" + str(epochs * 2) + ")")

        if not self.resuming and spec.base is not None and not spec.base.is_encoder_only \
                and not init_report.reinitialised and not recipe["init"]["encoder_only"]:
            # A full starting model is scored first: "before" for corrections, and the bar to beat.
            before = validator(model, self.progress, self.cancel)
            best = {"epoch": 0, "mean_dice": before["mean_dice"], "dice": before["dice"]}
            log.write({"type": "epoch", "epoch": 0, "step": 0, "val_dice": before["dice"],
                       "val_mean_dice": before["mean_dice"], "best_mean_dice": before["mean_dice"]})
            self._save_best(model, spec, split, best, before, init_report)

        model.train()
        for epoch in range(start_epoch, epochs):
            t_epoch = time.perf_counter()
            losses = []
            for batch in _batches(dataset, recipe, epoch, steps, d, self.seed):
                if distributed.any_flag(self.cancel.cancelled, d):
                    raise Cancelled(f"cancelled during epoch {epoch + 1}; {self._kept(epoch)}")
                x = batch["image"].to(d.device, non_blocking=True)
                y = batch["label"].to(d.device, non_blocking=True).float()
                opt.optimizer.zero_grad(set_to_none=True)
                with opt.autocast():
                    loss = loss_fn(net(x), y)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at step {step + 1}; lower train.lr or turn "
                                    f"off train.amp, then --resume {self.run.path}")
                opt.step(loss)
                step += 1
                value = distributed.mean_scalar(float(loss.item()), d)
                losses.append(value)
                if step % int(recipe["train"]["log_every"]) == 0:
                    log.write({"type": "step", "epoch": epoch + 1, "step": step, "loss": value,
                               "lr": opt.lr})
                self.progress("train", step, total, f"epoch {epoch + 1}/{epochs} loss {value:.4f}")
            record = {"type": "epoch", "epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)),
                      "lr": opt.lr, "epoch_time_s": round(time.perf_counter() - t_epoch, 2)}
            if (epoch + 1) % int(recipe["train"]["val_every"]) == 0 or epoch + 1 == epochs:
                result = validator(model, self.progress, self.cancel)
                record.update(val_dice=result["dice"], val_mean_dice=result["mean_dice"])
                if best is None or result["mean_dice"] > best["mean_dice"]:
                    best = {"epoch": epoch + 1, "mean_dice": result["mean_dice"], "dice": result["dice"]}
                    self._save_best(model, spec, split, best, before, init_report)
            record.update(best_mean_dice=best["mean_dice"] if best else None, **_peak_memory_gib(d.device))
            log.write(record)
            if d.main:
                _save_torch({"format": STATE_FORMAT, "epoch": epoch + 1, "step": step,
                             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                             **opt.state_dict(), "best": best, "before": before},
                            self.run / "state.pt", self._kept(epoch))
            distributed.barrier(d)
        log.close()
        summary = {"run": str(self.run.path), "best_model": str(self.run / "best.pt"), "best": best,
                   "before": {k: before[k] for k in ("dice", "mean_dice")} if before else None,
                   "epochs": epochs, "steps": step, "train_cases": len(split.train), "replay_cases": len(split.replay),
                   "val_cases": len(split.val), "processes": d.world, "device": str(d.device),
                   "time_s": round(time.perf_counter() - t_start, 1)}
        from .plots import learning_curves

        return self.finish(summary, learning_curves, "learning_curves.png")

    def _kept(self, epoch: int) -> str:
        if epoch == 0 and not self.run.has_state:
            return "no epoch had finished, so there is nothing to resume from yet."
        return "the last finished epoch is kept in state.pt."

    def _save_best(self, model, spec: TaskSpec, split: Split, best: dict, before, init_report) -> None:
        if not self.d.main:
            return
        import torch
        from brainsegfounder.checkpoints import save_checkpoint

        recipe = self.recipe
        base = spec.base_meta
        provenance = {
            "base": (f"{base.name} {base.version}" if base else str(spec.base.path)) if spec.base else "scratch",
            "data": str(recipe["data"]["path"]), "replay": str(recipe["data"]["replay"] or ""),
            "run": str(self.run.path.resolve()), "epoch": best["epoch"],
            "val_dice": {k: round(v, 4) for k, v in best["dice"].items()},
            "val_cases": [c.case_id for c in split.val],
            "train_cases": [{"case_id": c.case_id, **c.extra} for c in split.train],
            "replay_cases": len(split.replay), "seed": self.seed,
        }
        if before is not None:
            provenance["val_dice_before"] = {k: round(v, 4) for k, v in before["dice"].items()}
        name = recipe["model"]["name"] or self.run.path.name
        version = f"{time.strftime('%Y%m%d')}-e{best['epoch']}"
        meta = spec.meta(name, version, provenance, description=f"fine-tuned with brainsegfounder ({recipe['task']})")
        dtype = torch.float16 if recipe["model"]["save_dtype"] == "float16" else None
        try:
            save_checkpoint(self.run / "best.pt", model, meta, dtype=dtype)
        except OSError as error:
            raise UserError(f"cannot write {self.run / 'best.pt'} ({error.strerror or error}); the previous best "
                            "model is kept. Free space and continue with --resume " + str(self.run.path)) from None


def build_model_empty(spec: TaskSpec, recipe: dict):
    """The network for a resumed run (its weights come from state.pt)."""
    from brainsegfounder.networks import build_network

    return build_network(spec.network, use_checkpoint=bool(recipe["model"]["gradient_checkpointing"]))


def load_state(path: Path) -> dict:
    from brainsegfounder.checkpoints import read_checkpoint_file

    state = read_checkpoint_file(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a training state written by brainsegfounder finetune")
    return state
