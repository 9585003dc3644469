"""How a run steps: the optimiser, a warm-up schedule per step, and one precision decision.

AdamW with warm-up + cosine is BrainSegFounder's and the default. The other seeds' recipes
name theirs (``train.optimizer``, ``train.schedule``): Volume Fusion trains with Adam, the
3D MAE of Wald et al. with SGD (Nesterov, momentum 0.99) and nnU-Net's poly decay, VIS-MAE
with AdamW at betas 0.9 / 0.95."""

from __future__ import annotations

import math

from brainsegfounder.inference import auto_precision


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_poly(step: int, warmup: int, total: int, exponent: float = 0.9) -> float:
    """Learning-rate factor: linear warm-up, then nnU-Net's poly decay (1 - progress)^0.9."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - min(1.0, progress)) ** exponent


SCHEDULES = {"cosine": warmup_cosine, "poly": warmup_poly}
OPTIMIZERS = ("adamw", "adam", "sgd")


def make_optimizer(parameters, train: dict):
    """The recipe's optimiser (``train.optimizer``; recipes written before it existed: AdamW)."""
    import torch

    name = train.get("optimizer", "adamw")
    lr, decay = float(train["lr"]), float(train["weight_decay"])
    betas = tuple(float(b) for b in train.get("betas") or (0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, weight_decay=decay, momentum=float(train.get("momentum", 0.99)), nesterov=True
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=decay, betas=betas)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay, betas=betas)


class Optimisation:
    """The recipe's optimiser with its warm-up schedule per step, and mixed precision on CUDA: the engine's
    choice (bf16 where the GPU has it, else fp16 with loss scaling), used for the training
    steps and for validation alike.

    Args:
        model: the module whose parameters are optimised.
        train: the recipe's ``train`` block (``lr``, ``weight_decay``, ``amp``; optionally
            ``optimizer``, ``betas``, ``momentum``, ``schedule``).
        device: the torch device the run computes on.
        warmup: warm-up steps; total: steps of the whole schedule.
    """

    def __init__(self, model, train: dict, device, warmup: int, total: int):
        import torch

        self.optimizer = make_optimizer(model.parameters(), train)
        schedule = SCHEDULES[train.get("schedule", "cosine")]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(s, warmup, total))
        self.device_type = device.type
        self.precision = auto_precision(device) if bool(train["amp"]) and device.type == "cuda" else "fp32"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def autocast(self):
        """The precision context for forward passes, in training and in validation."""
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.precision != "fp32")

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
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
