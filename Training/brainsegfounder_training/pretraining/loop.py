"""The pretraining loop: one recipe, one run folder, resumable from any saved step.

Run folder::

    recipe.yaml     the resolved recipe          subjects.json  train / validation subjects, left out
    init.json       which weights were loaded    metrics.jsonl  losses per logged step, validation
    state.pt        the last saved step (model, optimiser, schedule, scaler, best so far)
    best.pt         self-describing SSL model with the lowest validation reconstruction L1;
                    ``finetune --base`` and stage 2 (``init.checkpoint``) take it directly
    skipped.jsonl   subjects that could not be read, with the reason
    summary.json, pretraining_curves.png, tensorboard/

The state is saved every ``train.save_every`` steps and when the run is stopped (Ctrl-C,
SIGTERM from a scheduler before pre-emption). The data stream and the corruptions are
functions of (seed, step, rank), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.modalities import canonical
from brainsegfounder.progress import CancelToken, ProgressCallback, null_progress

from .. import distributed
from ..recipe import dump
from ..trainer import MetricsLog, Optimisation, RunFolder, RunLoop, _peak_memory_gib, _save_torch, _seed_everything
from .data import CropStream, batches, item_seed, stream_loader
from .head import SSLHead, load_into_head, ssl_network_config
from .pretext import PretextSettings, make_views, pretext_losses
from .subjects import Subject, discover_subjects

STATE_FORMAT = "brainsegfounder-pretrain-state"
VALIDATION_STREAM = 1_000_003  # seeds of the fixed validation crops, apart from the training stream


def split_subjects(subjects: List[Subject], recipe: dict, seed: int):
    """(train, validation): a seeded share held out (BrainSegFounder: 1,917 of 41,400)."""
    data = recipe["data"]
    if len(subjects) < 2:
        raise UserError(f"pretraining needs at least 2 subjects (1 to train, 1 to validate); found {len(subjects)}")
    n_val = min(int(data["max_val_subjects"]), max(1, round(float(data["val_fraction"]) * len(subjects))),
                len(subjects) - 1)
    order = np.random.default_rng(seed).permutation(len(subjects))
    held = set(order[:n_val].tolist())
    return [s for i, s in enumerate(subjects) if i not in held], [s for i, s in enumerate(subjects) if i in held]


def _network(recipe: dict, init_ckpt):
    from brainsegfounder.networks import SIZES

    size = recipe["model"]["size"]
    channels = len(recipe["modalities"])
    if size == "auto":
        net = init_ckpt.network
        return ssl_network_config(channels, net.depths, net.num_heads, net.feature_size)
    if size not in SIZES:
        raise UserError(f"unknown model.size {size!r}; choose {', '.join(SIZES)} or auto")
    config = ssl_network_config(channels, **SIZES[size])
    if init_ckpt is not None:
        theirs = (init_ckpt.network.depths, init_ckpt.network.num_heads, init_ckpt.network.feature_size)
        if theirs != (config.depths, config.num_heads, config.feature_size):
            raise UserError(f"the init checkpoint is depths {list(theirs[0])}, heads {list(theirs[1])}, feature size "
                            f"{theirs[2]}, but model.size {size} differs; set model.size=auto or the matching size")
    return config


class Pretrainer(RunLoop):
    def __init__(self, recipe: dict, run: RunFolder, resuming: bool, device: str = "auto",
                 progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None):
        super().__init__(recipe, run, resuming, device, progress, cancel)
        self.modalities = [canonical(m) or m.lower() for m in recipe["modalities"]]
        self.settings = PretextSettings.from_recipe(recipe["ssl"])
        self.pending_skips: List[dict] = []

    # -- set-up -------------------------------------------------------------------------
    def _subjects(self) -> dict:
        path = self.run / "subjects.json"
        if self.resuming and path.is_file():  # the lists the run started with, whatever changed on disk since
            data = json.loads(path.read_text())
            return {k: [Subject.from_dict(s) for s in data[k]] if k in ("train", "validation") else data[k]
                    for k in data}
        data = self.recipe["data"]
        subjects, left_out = discover_subjects(data["path"], self.modalities)
        if data["validation"]:
            val, val_left = discover_subjects(data["validation"], self.modalities)
            left_out += val_left
            val_files = {p for s in val for p in s.images.values()}
            train = [s for s in subjects if not val_files & set(s.images.values())]
        else:
            train, val = split_subjects(subjects, self.recipe, self.seed)
        return {"train": train, "validation": val, "left_out": left_out}

    def _model(self, state: Optional[dict]):
        from brainsegfounder.checkpoints import load_checkpoint
        from brainsegfounder.networks import NetworkConfig
        from brainsegfounder.registry import resolve_model

        model_cfg = self.recipe["model"]
        if state is not None:
            config = NetworkConfig.from_dict(state["network"])
            init_ckpt = None
        else:
            init_ckpt = load_checkpoint(resolve_model(str(self.recipe["init"]["checkpoint"]))) \
                if self.recipe["init"]["checkpoint"] else None
            config = _network(self.recipe, init_ckpt)
        _seed_everything(self.seed)
        model = SSLHead(config, use_checkpoint=bool(model_cfg["gradient_checkpointing"]),
                        use_flash_attention=bool(model_cfg["flash_attention"]))
        report = None
        if init_ckpt is not None:
            report = load_into_head(model, init_ckpt, self.modalities, self.recipe["init"]["modalities"])
        return model, config, report, init_ckpt

    # -- the run ------------------------------------------------------------------------
    def fit(self) -> dict:
        import torch

        recipe, d, train_cfg = self.recipe, self.d, self.recipe["train"]
        t_start = time.perf_counter()
        subjects = self._subjects()
        state = self._load_state() if self.resuming else None
        model, config, report, init_ckpt = self._model(state)
        if d.main:  # only once the data and the model are known good: a failed start leaves no files
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_json("subjects.json", {k: [s.to_dict() for s in v] if k != "left_out" else v
                                                  for k, v in subjects.items()})
            self.run.write_text("recipe.yaml", dump(recipe))
            if report is not None:
                self.run.write_json("init.json", report.to_dict())
        if report is not None:
            self.progress("init", 1, 1, report.summary())
        distributed.barrier(d)
        model.to(d.device)
        net = self.wrap(model)

        total, warmup = int(train_cfg["steps"]), int(train_cfg["warmup_steps"])
        opt = Optimisation(model, train_cfg, d.device, warmup, total)
        torch.autograd.set_detect_anomaly(bool(train_cfg["anomaly_detection"]))

        step, best = 0, None
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state)
            step, best = int(state["step"]), state["best"]
            self.progress("resume", step, total, f"resuming after step {step}")
            if step >= total:
                raise UserError(f"{self.run.path} already finished its {total} steps; raise train.steps to train "
                                f"longer (e.g. train.steps={total * 2})")
        log = MetricsLog(self.run, d.main, step if state is not None else None, key="step")
        data = recipe["data"]
        cache_dir = None
        if data["cache"] == "disk":
            cache_dir = Path(data["cache_dir"]) if data["cache_dir"] else self.run / "cache"
        roi, crops = tuple(recipe["model"]["roi"]), int(train_cfg["crops_per_volume"])
        orientation = recipe["orientation"]
        stream = CropStream(subjects["train"], orientation, roi, crops, cache_dir, int(data["max_tries"]))
        val_stream = CropStream(subjects["validation"][d.rank::d.world], orientation, roi, crops, cache_dir,
                                int(data["max_tries"]))
        batch = int(train_cfg["batch_size"])
        loader = stream_loader(stream, batch, self.seed, step, total, d.rank, d.world, int(data["workers"]),
                               pin_memory=d.device.type == "cuda")
        ctx = dict(model=model, opt=opt, config=config)
        self.progress("pretrain", step, total, f"{len(subjects['train'])} subjects, {crops} crops of "
                                               f"{'x'.join(map(str, roi))} per volume, {batch} volumes per process")
        if state is None:  # the untrained model's validation losses: where the curves start
            log.write({"type": "validation", "step": 0, **self.validate(model, val_stream)})
        t_log, crops_since = time.perf_counter(), 0
        model.train()
        for batch_data in batches(loader):
            if distributed.any_flag(self.cancel.cancelled, d):
                self._save_state(ctx, step, best)
                raise Cancelled(f"stopped at step {step}; its state is saved: continue with --resume {self.run.path}")
            x = batch_data["image"].to(d.device, non_blocking=True)
            self.pending_skips += batch_data["skipped"]
            rng = np.random.default_rng([self.seed, step, d.rank])
            generator = torch.Generator(d.device).manual_seed(item_seed(self.seed + d.rank, step))
            inputs, targets, rotations = make_views(x, rng, generator, self.settings)
            opt.optimizer.zero_grad(set_to_none=True)
            with opt.autocast():
                outputs = net(inputs)
            losses = pretext_losses(outputs, targets, rotations, self.settings)
            if not torch.isfinite(losses.total):
                raise UserError(f"the loss became {losses.total.item()} at step {step + 1}; lower train.lr or turn "
                                f"off train.amp, then --resume {self.run.path}")
            opt.step(losses.total, model.parameters(), train_cfg["grad_clip"])
            step += 1
            crops_since += x.shape[0] * d.world
            if step % int(train_cfg["log_every"]) == 0 or step == total:
                parts = distributed.gather(losses.values(), d)
                values = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
                elapsed = time.perf_counter() - t_log
                log.write({"type": "step", "step": step, **values, "lr": opt.lr,
                           "crops_per_s": round(crops_since / max(elapsed, 1e-9), 3)})
                t_log, crops_since = time.perf_counter(), 0
                self.progress("pretrain", step, total, f"step {step}/{total} loss {values['loss']:.4f}")
            if step % int(train_cfg["val_every"]) == 0 or step == total:
                result = self.validate(model, val_stream)
                if best is None or result["val_reconstruction"] < best["val_reconstruction"]:
                    best = {"step": step, **result}
                    self._save_best(model, config, subjects, best, init_ckpt)
                log.write({"type": "validation", "step": step, **result,
                           "best_val_reconstruction": best["val_reconstruction"], **_peak_memory_gib(d.device)})
            if step % int(train_cfg["save_every"]) == 0 or step == total:
                self._save_state(ctx, step, best)
        log.close()
        skipped = self._skipped_ids()
        summary = {"run": str(self.run.path), "best_model": str(self.run / "best.pt"), "best": best, "steps": step,
                   "stage": recipe["stage"], "train_subjects": len(subjects["train"]),
                   "validation_subjects": len(subjects["validation"]), "left_out": len(subjects["left_out"]),
                   "skipped": len(skipped), "processes": d.world, "device": str(d.device),
                   "time_s": round(time.perf_counter() - t_start, 1)}
        from ..plots import pretraining_curves

        return self.finish(summary, pretraining_curves, "pretraining_curves.png")

    # -- validation ---------------------------------------------------------------------
    def validate(self, model, val_stream: CropStream) -> dict:
        """The three losses on fixed crops and corruptions of this process's validation subjects
        (the same every time), averaged over all processes; negatives within each batch only."""
        import torch

        was_training = model.training
        model.eval()
        batch = int(self.recipe["train"]["batch_size"])
        sums, count = {}, 0
        with torch.no_grad():
            for first in range(0, len(val_stream), batch):
                items = [val_stream[(i, item_seed(self.seed + VALIDATION_STREAM, i))]
                         for i in range(first, min(first + batch, len(val_stream)))]
                self.pending_skips += [s for it in items for s in it["skipped"]]
                x = torch.cat([it["image"] for it in items]).to(self.d.device)
                rng = np.random.default_rng([self.seed, VALIDATION_STREAM, first])
                generator = torch.Generator(self.d.device).manual_seed(item_seed(self.seed + VALIDATION_STREAM, first))
                inputs, targets, rotations = make_views(x, rng, generator, self.settings)
                amp = bool(self.recipe["train"]["amp"]) and self.d.device.type == "cuda"
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    outputs = model(inputs)
                values = pretext_losses(outputs, targets, rotations, self.settings, gather=False).values()
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value * x.shape[0]
                count += x.shape[0]
                self.progress("validate", min(first + batch, len(val_stream)), len(val_stream))
        model.train(was_training)
        parts = distributed.gather((sums, count), self.d)
        total = sum(c for _, c in parts)
        if not total:
            raise UserError("no validation subject could be read (see skipped.jsonl); fix them or give "
                            "data.validation, then resume")
        keys = sorted({k for s, _ in parts for k in s})
        return {f"val_{k}": sum(s.get(k, 0.0) for s, _ in parts) / total for k in keys}

    # -- files --------------------------------------------------------------------------
    def _skipped_ids(self) -> set:
        path = self.run / "skipped.jsonl"
        if not path.is_file():
            return set()
        from ..plots import read_jsonl

        return {r["id"] for r in read_jsonl(path)}

    def _write_skips(self) -> None:
        """All processes' newly skipped subjects, once each, into skipped.jsonl (rank 0)."""
        found = [s for part in distributed.gather(self.pending_skips, self.d) for s in part]
        self.pending_skips = []
        if not self.d.main or not found:
            return
        known = self._skipped_ids()
        new = {s["id"]: s for s in found if s["id"] not in known}
        if new:
            with open(self.run / "skipped.jsonl", "a") as f:
                f.writelines(json.dumps(s) + "\n" for s in new.values())
            self.progress("skipped", len(known) + len(new), len(known) + len(new),
                          f"skipped {', '.join(new)} (unreadable; listed in skipped.jsonl)")

    def _save_state(self, ctx: dict, step: int, best: Optional[dict]) -> None:
        self._write_skips()
        if self.d.main:
            kept = "the last saved step is kept in state.pt." if self.run.has_state else "no step was saved yet."
            _save_torch({"format": STATE_FORMAT, "step": step, "network": ctx["config"].to_dict(),
                         "model": {k: v.detach().cpu() for k, v in ctx["model"].state_dict().items()},
                         **ctx["opt"].state_dict(), "best": best},
                        self.run / "state.pt", kept)
        distributed.barrier(self.d)

    def _load_state(self) -> dict:
        from brainsegfounder.checkpoints import read_checkpoint_file

        path = self.run / "state.pt"
        state = read_checkpoint_file(path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(f"{path} is not a training state written by brainsegfounder pretrain")
        return state

    def _save_best(self, model, config, subjects: dict, best: dict, init_ckpt) -> None:
        if not self.d.main:
            return
        from brainsegfounder.checkpoints import ModelMeta, save_checkpoint

        recipe = self.recipe
        base = "scratch"
        if init_ckpt is not None:
            meta = init_ckpt.meta
            base = f"{meta.name} {meta.version}" if meta is not None else str(init_ckpt.path)
        elif self.resuming and (self.run / "init.json").is_file():
            base = json.loads((self.run / "init.json").read_text())["source"]
        provenance = {"stage": recipe["stage"], "base": base, "data": str(recipe["data"]["path"]),
                      "run": str(self.run.path.resolve()), "step": best["step"],
                      "val_reconstruction_l1": round(best["val_reconstruction"], 5),
                      "train_subjects": len(subjects["train"]), "validation_subjects": len(subjects["validation"]),
                      "seed": self.seed, "pretext": "rotation + contrastive (NT-Xent) + inpainting (L1), "
                      f"weights {self.settings.rotation_weight:g}:{self.settings.contrastive_weight:g}:"
                      f"{self.settings.reconstruction_weight:g}"}
        name = recipe["model"]["name"] or self.run.path.name
        meta = ModelMeta(network=config, modalities=tuple(self.modalities), label_schema="", name=name,
                         version=f"{time.strftime('%Y%m%d')}-s{best['step']}", task="ssl",
                         roi_size=tuple(recipe["model"]["roi"]), orientation=recipe["orientation"],
                         provenance=provenance,
                         description=f"self-supervised stage {recipe['stage']} encoder and heads (brainsegfounder "
                                     "pretrain); fine-tune it with brainsegfounder finetune --base")
        try:
            save_checkpoint(self.run / "best.pt", model, meta)
        except OSError as error:
            raise UserError(f"cannot write {self.run / 'best.pt'} ({error.strerror or error}); the previous best "
                            f"model is kept. Free space and continue with --resume {self.run.path}") from None
