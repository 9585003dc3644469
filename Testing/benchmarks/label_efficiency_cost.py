"""What a label-efficiency study costs, before it runs: its units and training steps from the same
recipes and overrides it would run (each recipe loaded and checked as the CLI does), and the
floating-point work of those steps counted on PyTorch's meta device (nothing is computed), turned
into GPU-hours at an assumed sustained rate (``--gpu-tflops``).

Counted: each training step's forward and backward pass of the backbone at its crop and batch
(BrainSegFounder's two views as two crops). Not counted: the pretext heads and light decoders,
validation, the test set's sliding windows, data loading; so this is a floor at that rate."""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

from label_efficiency_plan import ARMS, PRETRAININGS, Size, Unit

OUTPUTS = 3  # the BraTS regions; the pretext outputs (2 to 5 channels) change the count by little


@functools.lru_cache(maxsize=None)
def step_tflop(architecture: str, size: str, channels: int, batch: int, roi: Tuple[int, int, int]) -> float:
    """TFLOP of one forward and backward pass, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from brainsegfounder.networks import architecture_name, sized_config

    network = sized_config(architecture_name(architecture), size, channels, OUTPUTS).build().to("meta")
    counter = FlopCounterMode(display=False)
    with counter:
        network(torch.empty(batch, channels, *roi, device="meta")).sum().backward()
    return counter.get_total_flops() / 1e12


def _recipe_args(args: List[str]) -> Tuple[str, List[str]]:
    """The --config and the KEY=VALUE overrides of a unit's command (paths stand in for data)."""
    flags = {"--data": "data.path", "--init": "init.checkpoint", "--base": "init.checkpoint"}
    args = [a.replace("{run}", "RUN").replace("{unit}", "UNIT") for a in args]
    config = args[args.index("--config") + 1]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    overrides += [f"{flags[a]}={args[i + 1]}" for i, a in enumerate(args) if a in flags]
    return config, overrides


def training_steps(size: Size, unit: Unit) -> Dict[str, object]:
    """Backbone, size, channels, crops per step, crop and steps of a unit's training command."""
    config, overrides = _recipe_args(unit.steps[0].args)
    if unit.kind == "pretrain":
        from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

        recipe = load_pretrain_recipe(config, overrides)
        backbone = PRETRAININGS[unit.key.split("/", 1)[1]].backbone
        views = 2 if recipe["task"].startswith("brainsegfounder") else 1
        crops = int(recipe["train"]["batch_size"]) * int(recipe["train"]["crops_per_volume"]) * views
        steps = int(recipe["train"]["steps"])
    else:
        from brainsegfounder_training.finetuning.recipe import load_recipe

        recipe = load_recipe(config, overrides)
        backbone = ARMS[unit.info["arm"]].backbone
        crops = int(recipe["train"]["batch_size"])
        steps = int(recipe["train"]["epochs"]) * int(recipe["train"]["steps_per_epoch"])
    model = recipe["model"]["size"]
    return {
        "backbone": backbone,
        "size": size.models[backbone] if model == "auto" else model,
        "channels": len(recipe["modalities"] or ["flair", "t1ce", "t1", "t2"]),
        "crops": crops,
        "roi": tuple(recipe["model"]["roi"]),
        "steps": steps,
    }


def print_estimate(args, size: Size, units: List[Unit]) -> None:
    kinds = [u.kind for u in units]
    print(
        f"label-efficiency study, size {args.size}: {kinds.count('synth')} synthetic cohorts, "
        f"{kinds.count('pretrain')} pretraining runs, {kinds.count('finetune')} fine-tunings "
        f"({len(args.arms)} arms x {len(args.fractions)} label fractions x {len(args.seeds)} seeds)"
    )
    print(f"{'unit':44s} {'backbone':18s} {'crops x roi':18s} {'steps':>8s} {'TFLOP/step':>10s} {'GPU-h':>8s}")
    total_h = {"pretrain": 0.0, "finetune": 0.0}
    rate = args.gpu_tflops
    for unit in units:
        if unit.kind == "synth":
            continue
        t = training_steps(size, unit)
        tflop = step_tflop(t["backbone"], t["size"], t["channels"], t["crops"], t["roi"])
        hours = tflop * t["steps"] / rate / 3600
        total_h[unit.kind] += hours
        crop = f"{t['crops']} x {'x'.join(map(str, t['roi']))}"
        model = f"{t['backbone']} {t['size']}"
        print(f"{unit.key:44s} {model:18s} {crop:18s} {t['steps']:8d} {tflop:10.3f} {hours:8.2f}")
    print(
        f"training GPU-hours at {rate:g} sustained TFLOP/s (an assumption: --gpu-tflops): pretraining "
        f"{total_h['pretrain']:.1f}, fine-tuning {total_h['finetune']:.1f}, total "
        f"{sum(total_h.values()):.1f}; validation, testing and data loading come on top"
    )
