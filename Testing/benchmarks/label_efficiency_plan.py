"""The label-efficiency study's plan: its sizes, its arms (initialisations) and the units of work
(synthetic cohorts, pretraining runs, fine-tunings) each as the ``brainsegfounder`` command it runs.

Every arm fine-tunes with the same recipe and the same budget (optimiser steps x batch x crop):
only the starting weights and the backbone they belong to differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

FRACTIONS = (0.05, 0.10, 0.25, 1.0)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Size:
    spacing: float  # mm of every synthetic cohort
    roi: Tuple[int, int, int]  # pretraining and fine-tuning crop, every arm
    models: Dict[str, str]  # backbone -> model.size
    healthy: int  # pretraining cohort (healthy subjects, t1 + flair)
    glioma: int  # fine-tuning cohort (labelled glioma cases, 4 contrasts)
    folds: int  # of the fine-tuning cohort; fold 0 is the validation fold (model selection)
    test: int  # the held-out test cohort (another synthetic seed)
    pretrain: dict  # recipe overrides of every pretraining run (None: the recipe's own)
    stage2_steps: Optional[int]  # BrainSegFounder's stage 2 (None: the recipe's own)
    finetune_config: str  # the fine-tuning recipe every arm shares
    finetune: dict  # its overrides: the shared budget
    tiny_recipes: bool  # pretrain with the CPU try-out recipes (else the published ones)


_CPU_PRETRAIN = {
    "model.gradient_checkpointing": "false",
    "train.batch_size": 2,
    "train.crops_per_volume": 1,
    "data.workers": 0,
    "data.max_val_subjects": 1,
}
_CPU_FINETUNE = {
    "model.gradient_checkpointing": "false",
    "train.batch_size": 1,
    "train.warmup_epochs": 0,
    "data.workers": 0,
    "data.cache": "memory",
    "data.max_val_cases": 2,
    "validation.overlap": 0,
}
TINY = {"swinunetr": "tiny", "resenc": "tiny", "pctnet": "tiny"}

SIZES: Dict[str, Size] = {
    # The test's: 4 mm, two steps of everything; 64^3, as a 32^3 crop leaves ResEnc's bottleneck one voxel
    # (instance norm refuses it in training).
    "smoke": Size(
        spacing=4.0,
        roi=(64, 64, 64),
        models=TINY,
        healthy=3,
        glioma=6,
        folds=3,
        test=2,
        pretrain={**_CPU_PRETRAIN, "train.steps": 2, "train.warmup_steps": 0, "train.val_every": 2},
        stage2_steps=1,
        finetune_config="demo",
        finetune={**_CPU_FINETUNE, "train.epochs": 1, "train.steps_per_epoch": 2, "train.val_every": 1},
        tiny_recipes=True,
    ),
    # A 2-core CPU, under 90 minutes (README: the timed pieces): tiny models, 3 mm, 64^3.
    "small": Size(
        spacing=3.0,
        roi=(64, 64, 64),
        models=TINY,
        healthy=12,
        glioma=24,
        folds=6,
        test=6,
        pretrain={**_CPU_PRETRAIN, "train.steps": 40, "train.warmup_steps": 4, "train.val_every": 20},
        stage2_steps=20,
        finetune_config="demo",
        finetune={**_CPU_FINETUNE, "train.epochs": 2, "train.steps_per_epoch": 8, "train.val_every": 2},
        tiny_recipes=True,
    ),
    # The GPU study: the published backbones at 1 mm and the recipes' own step counts.
    "real": Size(
        spacing=1.0,
        roi=(128, 128, 128),
        models={"swinunetr": "62M", "resenc": "L", "pctnet": "45M"},
        healthy=2000,
        glioma=300,
        folds=6,
        test=100,
        pretrain={},
        stage2_steps=None,
        finetune_config="brats",
        finetune={
            "train.epochs": 100,
            "train.steps_per_epoch": 250,
            "train.warmup_epochs": 10,
            "train.val_every": 10,
            "data.max_val_cases": 20,
        },
        tiny_recipes=False,
    ),
}


@dataclass(frozen=True)
class Pretraining:
    """One ``brainsegfounder pretrain`` run on the healthy cohort (or, ``stage2``, the fine-tuning
    cohort's training images, labels unused)."""

    name: str
    recipe: str  # the published recipe
    tiny_recipe: str  # its CPU try-out
    backbone: str
    after: Optional[str] = None  # stage 2: the stage-1 pretraining it starts from


PRETRAININGS = {
    p.name: p
    for p in (
        Pretraining("brainsegfounder", "stage1-ukb", "stage1-ukb", "swinunetr"),
        Pretraining("brainsegfounder-stage2", "stage2-brats", "stage2-brats", "swinunetr", after="brainsegfounder"),
        Pretraining("volume-fusion", "volume-fusion-pctnet", "volume-fusion-tiny", "pctnet"),
        Pretraining("swin-mae", "swin-mae", "swin-mae-tiny", "swinunetr"),
        Pretraining("mae-resenc", "mae-resenc-l", "mae-tiny", "resenc"),
    )
}


@dataclass(frozen=True)
class Arm:
    name: str
    backbone: str
    pretraining: Optional[str]  # None: from scratch
    label: str


ARMS = {
    a.name: a
    for a in (
        Arm("scratch-swinunetr", "swinunetr", None, "scratch (SwinUNETR)"),
        Arm("scratch-resenc", "resenc", None, "scratch (ResEnc)"),
        Arm("scratch-pctnet", "pctnet", None, "scratch (PCT-Net)"),
        Arm("brainsegfounder", "swinunetr", "brainsegfounder", "BrainSegFounder, 3 tasks, stage 1 (SwinUNETR)"),
        Arm("brainsegfounder-2stage", "swinunetr", "brainsegfounder-stage2", "BrainSegFounder, 2 stages (SwinUNETR)"),
        Arm("volume-fusion", "pctnet", "volume-fusion", "Volume Fusion (PCT-Net)"),
        Arm("swin-mae", "swinunetr", "swin-mae", "MAE (Swin)"),
        Arm("mae-resenc", "resenc", "mae-resenc", "MAE (ResEnc)"),
    )
}


@dataclass(frozen=True)
class Step:
    """One ``brainsegfounder`` command of a unit; ``{run}`` and ``{unit}`` stand for their folders.
    It is done when ``done`` (under the unit) exists; a run killed after writing ``state`` continues
    with ``resume`` instead of starting over."""

    args: List[str]
    done: str
    out: str = ""  # the folder (under the unit) the command writes: cleared before a fresh start
    state: Optional[str] = None
    resume: Optional[List[str]] = None


@dataclass(frozen=True)
class Unit:
    """One piece of work: its key (its folder under the run), its steps and what it needs first."""

    key: str
    steps: List[Step]
    needs: Tuple[str, ...] = ()
    kind: str = "finetune"  # synth, pretrain or finetune
    info: dict = field(default_factory=dict)


def _overrides(values: dict) -> List[str]:
    return [f"{k}={v}" for k, v in values.items()]


def _roi(size: Size) -> str:
    return "[" + ",".join(map(str, size.roi)) + "]"


def synth_units(size: Size) -> List[Unit]:
    spacing = str(size.spacing)
    cohorts = {  # name -> kind, cases, seed, folds; seeds apart so no case is in two cohorts
        "healthy": ("healthy", size.healthy, 1000, 1),
        "glioma": ("brats", size.glioma, 2000, size.folds),
        "test": ("brats", size.test, 3000, 1),
    }
    units = []
    for name, (kind, n, seed, folds) in cohorts.items():
        args = ["synth", "--out", "{unit}", "--kind", kind, "--n", str(n), "--seed", str(seed)]
        # the realistic world: in the classic one a model reaches Dice 0.99 from anything
        args += ["--spacing", spacing, "--folds", str(folds), "--world", "realistic"]
        units.append(Unit(f"data/{name}", [Step(args, done="datalist.json")], kind="synth"))
    return units


def pretrain_unit(size: Size, p: Pretraining) -> Unit:
    recipe = p.tiny_recipe if size.tiny_recipes else p.recipe
    command = ["pretrain", "--config", recipe]
    overrides = dict(size.pretrain)
    if p.after:  # stage 2 on the fine-tuning cohort's training folds, from stage 1
        command += ["--init", f"{{run}}/pretrain/{p.after}/best.pt", "--data", "{run}/data/glioma/stage2.json"]
        overrides["model.size"] = "auto"
        if size.stage2_steps:
            overrides["train.steps"] = size.stage2_steps
            overrides["train.val_every"] = size.stage2_steps
    else:
        command += ["--data", "{run}/data/healthy"]
        overrides["model.architecture"] = p.backbone
        overrides["model.size"] = size.models[p.backbone]
    if size.tiny_recipes:
        overrides["model.roi"] = _roi(size)
    needs = ("data/healthy", "data/glioma") + ((f"pretrain/{p.after}",) if p.after else ())
    step = Step(
        [*command, "--out", "{unit}", *_overrides(overrides)],
        done="summary.json",
        state="state.pt",
        resume=["pretrain", "--resume", "{unit}"],
    )
    return Unit(f"pretrain/{p.name}", [step], needs, kind="pretrain")


def finetune_unit(size: Size, arm: Arm, fraction: float, seed: int) -> Unit:
    key = f"finetune/{arm.name}/f{fraction:g}-s{seed}"
    overrides = {
        **size.finetune,
        "model.roi": _roi(size),
        "data.folds": size.folds,
        "data.fold": 0,
        "data.label_fraction": fraction,
        "train.seed": seed,
        "model.save_dtype": "float32",
        "model.name": f"{arm.name}-f{fraction:g}-s{seed}",
    }
    finetune = ["finetune", "--config", size.finetune_config, "--data", "{run}/data/glioma"]
    needs: Tuple[str, ...] = ("data/glioma", "data/test")
    if arm.pretraining:
        finetune += ["--base", f"{{run}}/pretrain/{arm.pretraining}/best.pt"]
        overrides.update({"model.architecture": "auto", "model.size": "auto"})
        needs += (f"pretrain/{arm.pretraining}",)
    else:
        overrides.update({"model.architecture": arm.backbone, "model.size": size.models[arm.backbone]})
    evaluate = ["evaluate", "--data", "{run}/data/test", "--model", "{unit}/run/best.pt", "--out", "{unit}/test"]
    info = {"arm": arm.name, "fraction": fraction, "seed": seed, "backbone": arm.backbone}
    steps = [
        Step(
            [*finetune, "--out", "{unit}/run", *_overrides(overrides)],
            done="run/summary.json",
            out="run",
            state="run/state.pt",
            resume=["finetune", "--resume", "{unit}/run"],
        ),
        Step(evaluate, done="test/summary.json", out="test"),
    ]
    return Unit(key, steps, needs, info=info)


def plan(size: Size, arms: List[str], fractions, seeds) -> List[Unit]:
    """Every unit of a study, in an order that runs each after what it needs."""
    units = synth_units(size)
    wanted = []
    for name in arms:
        p = ARMS[name].pretraining
        while p and p not in wanted:
            wanted.insert(0, p)
            p = PRETRAININGS[p].after
    units += [pretrain_unit(size, PRETRAININGS[p]) for p in PRETRAININGS if p in wanted]
    units += [finetune_unit(size, ARMS[a], f, s) for s in seeds for f in fractions for a in arms]
    return units
