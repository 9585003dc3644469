"""Pretraining throughput: crops per second and peak memory, ours against a plain reference loop.

Runs, in one invocation, each configuration in a fresh process (so peak memory is its own)
on the same crops of a synthetic healthy subject (1 mm, UK Biobank grid, read through the
pretraining data path), for each pretext task (``--tasks``) on each backbone it fits:

* brainsegfounder (SwinUNETR):
  * reference: as BrainSegFounder ran: fp32, no gradient checkpointing, autograd anomaly
    detection on, the two views through the network one after the other, explicit attention,
    negatives from the own GPU only;
  * ours: the stage-1 recipe: AMP (bf16) on CUDA, gradient checkpointing, scaled-dot-product
    attention, both views in one batch;
  * ours without checkpointing: the speed bought back with memory where memory allows.
* swin-mae, mae, volume-fusion and the combinations (every backbone a task fits):
  * reference: the obvious loop: fp32, explicit attention, masks and fusions drawn with numpy on
    the host and copied to the device every step, one forward pass per task of a combination;
  * ours: the task's code as ``pretrain`` runs it (pretraining/tasks.py): AMP on CUDA,
    scaled-dot-product attention, masks drawn on the device, one forward pass for a combination.

and prints crops/s, peak memory (host RSS; GPU allocated) and the ratio to the reference, then
what the task's published schedule costs on this device.

    python Testing/benchmarks/pretrain_throughput.py              # CPU: BrainSegFounder's tasks, 64^3
    python Testing/benchmarks/pretrain_throughput.py --device cuda  # GPU: 96^3, 2 volumes x 2 crops
    python Testing/benchmarks/pretrain_throughput.py --tasks all --device cuda  # every task, published sizes
    python Testing/benchmarks/pretrain_throughput.py --tasks all --sizes tiny --steps 1 --warmup 0  # a check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training")]

from brainsegfounder_training.harness.host import peak_host_memory_gib  # noqa: E402 (after the path)

VARIANTS = {
    "reference": dict(amp=False, checkpoint=False, anomaly=True, joint_views=False, flash=False),
    "ours": dict(amp=True, checkpoint=True, anomaly=False, joint_views=True, flash=True),
    "ours without checkpointing": dict(amp=True, checkpoint=False, anomaly=False, joint_views=True, flash=True),
}
TASKS = ("brainsegfounder", "swin-mae", "mae", "volume-fusion", "brainsegfounder+swin-mae", "volume-fusion+mae")
# Each task on the backbones it fits (the Swin tasks need SwinUNETR's Swin encoder).
BACKBONES = {
    "brainsegfounder": ("swinunetr",),
    "swin-mae": ("swinunetr",),
    "brainsegfounder+swin-mae": ("swinunetr",),
    "mae": ("resenc", "pctnet", "swinunetr"),
    "volume-fusion": ("pctnet", "resenc", "swinunetr"),
    "volume-fusion+mae": ("resenc", "pctnet", "swinunetr"),
}
PUBLISHED_SIZE = {"swinunetr": "62M", "resenc": "L", "pctnet": "45M"}
# The seeds' crops and batches per GPU (volumes, crops per volume), and their schedules' steps.
PUBLISHED = {
    "brainsegfounder": ((96, 96, 96), (2, 2), 100_000),
    "brainsegfounder+swin-mae": ((96, 96, 96), (2, 2), 100_000),
    "swin-mae": ((96, 96, 96), (2, 2), 100_000),
    "mae": ((160, 160, 160), (2, 1), 250_000),
    "volume-fusion": ((64, 128, 128), (4, 1), 400_000),
    "volume-fusion+mae": ((160, 160, 160), (2, 1), 250_000),
}
ORIGINAL_STEPS = 100_000
ORIGINAL_GPUS = 64  # the smallest of BrainSegFounder's 64-128 GPU runs
COHORT = 41_400
SUBJECT = {"spacing_mm": 1.0}  # the synthetic subject the crops come from (--subject-spacing)


def crops_of_a_subject(roi, n_crops: int, batch: int):
    """``batch`` volumes' worth of crops (batch * n_crops, C, *roi) from a synthetic healthy subject."""
    import torch

    from brainsegfounder.synth.cohort import write_cohort
    from brainsegfounder_training.pretraining.data import CropStream
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    with tempfile.TemporaryDirectory() as tmp:
        root = write_cohort(Path(tmp) / "ukb", kind="healthy", n=1, seed=9, spacing=SUBJECT["spacing_mm"])
        subjects, _ = discover_subjects(root, ["t1", "flair"])
        stream = CropStream(subjects, "LPS", roi, n_crops)
        t0 = time.perf_counter()
        crops = torch.cat([stream[(0, seed)]["image"] for seed in range(batch)])
        read_s = (time.perf_counter() - t0) / batch
    return crops, read_s


def run_variant(
    name: str, size: str, roi, n_crops: int, batch: int, steps: int, warmup: int, device_name: str, window=None
):
    """One configuration in this process: (crops/s, peak host GiB, peak GPU GiB)."""
    from dataclasses import replace

    import numpy as np
    import torch

    from brainsegfounder.networks import SIZES
    from brainsegfounder_training.pretraining.head import SSLHead, ssl_network_config
    from brainsegfounder_training.pretraining.pretext import PretextSettings, make_views, pretext_losses

    cfg = VARIANTS[name]
    device = torch.device(device_name)
    crops, read_s = crops_of_a_subject(roi, n_crops, batch)
    crops = crops.to(device)
    torch.manual_seed(0)
    config = ssl_network_config(crops.shape[1], **SIZES[size])
    head = SSLHead(
        replace(config, window_size=window) if window else config,
        use_checkpoint=cfg["checkpoint"],
        use_flash_attention=cfg["flash"],
    ).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=4e-4, weight_decay=0.1)
    settings = PretextSettings(gather_negatives=False)
    use_amp = cfg["amp"] and device.type == "cuda"
    torch.autograd.set_detect_anomaly(cfg["anomaly"])

    def step(i: int):
        rng = np.random.default_rng([0, i])
        generator = torch.Generator(device).manual_seed(i)
        inputs, targets, rotations = make_views(crops, rng, generator, settings)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            if cfg["joint_views"]:
                outputs = head(inputs)
            else:  # the original: one forward per view
                n = inputs.shape[0] // 2
                first, second = head(inputs[:n]), head(inputs[n:])
                outputs = tuple(torch.cat([a, b]) for a, b in zip(first, second, strict=True))
        losses = pretext_losses(outputs, targets, rotations, settings)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()

    return _timed(step, steps, warmup, device, crops.shape[0], read_s)


def _task_network(task: str, architecture: str, size: str, roi, batch: int, n_crops: int, flash: bool, window=None):
    """The task (pretraining/tasks.py) and its network, built as ``pretrain`` builds them."""
    from dataclasses import replace

    from brainsegfounder.networks import SwinUNETRConfig
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe
    from brainsegfounder_training.pretraining.start_weights import backbone_config
    from brainsegfounder_training.pretraining.tasks import pretext_task

    recipe = load_pretrain_recipe(
        None,
        [
            f"task={task}",
            f"model.architecture={architecture}",
            f"model.size={size}",
            f"model.roi={list(roi)}",
            f"train.batch_size={batch}",
            f"train.crops_per_volume={n_crops}",
        ],
    )
    pretext = pretext_task(recipe)
    config = backbone_config(recipe, pretext, None)
    if window and isinstance(config, SwinUNETRConfig):
        config = replace(config, window_size=window)
    return pretext, pretext.build(config, False, flash)


def reference_losses(task: str, pretext, net, crops, rng):
    """The obvious loop for a task: masks and fusions made with numpy on the host, fp32, one forward
    pass per task of a combination (the same network and loss functions as ours)."""
    import numpy as np
    import torch

    from brainsegfounder_training.pretraining.masking import masked_mse
    from brainsegfounder_training.pretraining.pretext import make_views, pretext_losses
    from brainsegfounder_training.pretraining.volume_fusion import class_map

    device, n, channels = crops.device, crops.shape[0], crops.shape[1]
    total = 0.0

    def host_mask():
        block, grid = pretext.block, [r // pretext.block for r in crops.shape[2:]]
        count = round(pretext.ratio * int(np.prod(grid)))
        blocks = np.zeros((n, int(np.prod(grid))), dtype=bool)
        for i in range(n):
            blocks[i, rng.choice(blocks.shape[1], count, replace=False)] = True
        blocks = blocks.reshape(n, *grid)
        voxels = blocks.repeat(block, 1).repeat(block, 2).repeat(block, 3)
        return torch.from_numpy(blocks).to(device), torch.from_numpy(voxels).to(device)

    if task.startswith("volume-fusion"):
        fg = crops.cpu().numpy()
        bg = np.roll(fg, -pretext.crops_per_volume, axis=0)
        labels = np.stack([class_map(fg.shape[2:], rng, pretext.classes, pretext.boxes, pretext.box_size) for _ in fg])
        alpha = labels[:, None] / pretext.classes
        fused = torch.from_numpy(alpha * fg + (1 - alpha) * bg).float().to(device)
        out = net(fused)[:, : pretext.classes + 1]
        total = total + pretext.criterion(out, torch.from_numpy(labels[:, None]).to(device))
    if task in ("mae", "volume-fusion+mae"):
        _, voxels = host_mask()
        out = net(crops * (~voxels[:, None]).float())[:, -channels:]
        total = total + masked_mse(out, crops, voxels)
    if task == "swin-mae":
        blocks, voxels = host_mask()
        total = total + masked_mse(net(crops, blocks), crops, voxels)
    if task == "brainsegfounder+swin-mae":
        generator = torch.Generator(device).manual_seed(int(rng.integers(1 << 30)))
        inputs, targets, rotations = make_views(crops, rng, generator, pretext.settings)
        views = pretext_losses(net(inputs), targets, rotations, pretext.settings, gather=False)
        blocks, voxels = host_mask()
        total = total + views.total + masked_mse(net(crops, blocks)[2], crops, voxels)
    return total


def run_task_variant(
    name: str, task: str, architecture: str, size: str, roi, n_crops, batch, steps, warmup, device_name, window=None
):
    """One configuration of a task other than BrainSegFounder's alone: (crops/s, peak memory)."""
    import contextlib

    import numpy as np
    import torch

    device = torch.device(device_name)
    crops, read_s = crops_of_a_subject(roi, n_crops, batch)
    crops = crops.to(device)
    ids = [f"volume{i}" for i in range(batch)]  # fusion partners: the crops of the next "volume"
    torch.manual_seed(0)
    ours = name == "ours"
    pretext, net = _task_network(task, architecture, size, roi, batch, n_crops, flash=ours, window=window)
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    use_amp = ours and device.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    def step(i: int):
        rng = np.random.default_rng([0, i])
        if ours:
            generator = torch.Generator(device).manual_seed(i)
            loss = pretext.losses(net, crops, ids, rng, generator, autocast, gather=False).total
        else:
            loss = reference_losses(task, pretext, net, crops, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, steps, warmup, device, crops.shape[0], read_s)


def _timed(step, steps: int, warmup: int, device, crops_per_step: int, read_s: float) -> dict:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync()
    elapsed = time.perf_counter() - t0
    return {
        "crops_per_s": crops_per_step * steps / elapsed,
        "step_s": elapsed / steps,
        "host_gib": peak_host_memory_gib(),  # the harness's portable measure
        "gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "read_s": read_s,
    }


def estimate(crops_per_s: float, crops_per_step: int, steps: int = ORIGINAL_STEPS, gpus: int = ORIGINAL_GPUS) -> str:
    total = steps * crops_per_step * gpus
    hours = total / crops_per_s / 3600
    devices = math.ceil(hours / 24)
    one = steps * crops_per_step / crops_per_s / 3600
    return (
        f"{steps:,} steps x {crops_per_step} crops x {gpus} GPUs = {total / 1e6:.1f}M crops "
        f"({total / COHORT:.0f} per subject of {COHORT:,}): {hours:,.0f} device-hours; under 24 h with "
        f"{devices} devices (linear DDP scaling assumed). The same {steps // 1000}k steps on one device: {one:,.1f} h."
    )


def _variants(task: str, asked: str) -> list:
    names = asked.split(",")
    if task != "brainsegfounder":  # checkpointing is BrainSegFounder's recipe's trade; the others: two
        names = [n for n in names if n in ("reference", "ours")]
    return names


def _measure(args, task, architecture, size, roi, name, window) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--roi",
            "x".join(map(str, roi)),
            "--steps",
            str(args.steps_),
            "--warmup",
            str(args.warmup_),
            *(["--window", str(window)] if window else []),
            "--subject-spacing",
            str(SUBJECT["spacing_mm"]),
            "--one",
            f"{name}|{size}|{task}|{architecture}",
        ],
        capture_output=True,
        text=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--sizes",
        default="62M,64M",
        help="SwinUNETR sizes; tiny: every backbone's tiny size (else ResEnc L, PCT-Net 45M)",
    )
    parser.add_argument(
        "--roi",
        help="crop: a side (64) or 3 sides (64x128x128); default the task's published crop "
        "on CUDA (BrainSegFounder's 96^3), 64^3 on CPU",
    )
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 10 on CUDA, 1 on CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tasks", default="brainsegfounder", help=f"comma-separated, or all: {', '.join(TASKS)}")
    parser.add_argument("--architectures", help="only these backbones (swinunetr, resenc, pctnet)")
    # Testing/gpu/check.sh --dry-run: the script's own check on a CPU in seconds
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--window", type=int, help="attention window (default the network's, 7)")
    parser.add_argument(
        "--subject-spacing",
        type=float,
        default=1.0,
        help="voxel size (mm) of the synthetic subject the crops come from (default 1, as UK Biobank's; the "
        "dry run's 3 mm makes it in a tenth of the time)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    SUBJECT["spacing_mm"] = args.subject_spacing
    cuda = args.device.startswith("cuda")
    args.steps_ = steps = args.steps or (10 if cuda else 1)
    args.warmup_ = warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    tasks = TASKS if args.tasks == "all" else tuple(args.tasks.split(","))

    def roi_of(task):
        if args.roi:
            sides = [int(v) for v in str(args.roi).split("x")]
            return tuple(sides * 3 if len(sides) == 1 else sides)
        return PUBLISHED[task][0] if cuda else (64, 64, 64)

    def batch_of(task):  # (volumes, crops per volume); fusion needs two volumes
        if cuda:
            return PUBLISHED[task][1]
        return (1, 2) if task == "brainsegfounder" else (2, 1)

    if args.one:
        name, size, task, architecture = args.one.split("|")
        roi, (batch, n_crops) = roi_of(task), batch_of(task)
        if task == "brainsegfounder":
            result = run_variant(name, size, roi, n_crops, batch, steps, warmup, args.device, args.window)
        else:
            result = run_task_variant(
                name, task, architecture, size, roi, n_crops, batch, steps, warmup, args.device, args.window
            )
        print(json.dumps(result))
        return 0

    import torch

    device_text = (
        torch.cuda.get_device_name(0)
        if cuda
        else f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    print(f"pretraining throughput on {device_text}; {steps} timed steps after {warmup} warm-up per configuration")
    header = (
        f"{'size':5} {'configuration':27} {'crops/s':>8} {'s/step':>7} {'host GiB':>9} {'GPU GiB':>8} "
        f"{'speed x':>8} {'GPU mem x':>9}"
    )
    estimates = []
    for task in tasks:
        roi, (batch, n_crops) = roi_of(task), batch_of(task)
        for architecture in BACKBONES[task]:
            if args.architectures and architecture not in args.architectures.split(","):
                continue
            sizes = args.sizes.split(",") if architecture == "swinunetr" else [PUBLISHED_SIZE[architecture]]
            if args.sizes == "tiny":
                sizes = ["tiny"]
            views = " (x2 views)" if task.startswith("brainsegfounder") else ""
            print(
                f"\ntask {task} on {architecture}: {'x'.join(map(str, roi))} crops, {batch} volume(s) x {n_crops} "
                f"crop(s) per step{views}"
            )
            print(header)
            for size in sizes:
                results = {}
                for name in _variants(task, args.variants):
                    proc = _measure(args, task, architecture, size, roi, name, args.window)
                    if proc.returncode != 0:
                        oom = "out of memory" in proc.stderr.lower()
                        reason = "out of memory" if oom else proc.stderr.strip()[-300:]
                        print(f"{size:5} {name:27} failed: {reason}")
                        continue
                    r = results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
                    ref = results.get("reference")
                    speed = f"{r['crops_per_s'] / ref['crops_per_s']:.2f}" if ref else "-"
                    mem = f"{r['gpu_gib'] / ref['gpu_gib']:.2f}" if ref and r["gpu_gib"] else "-"
                    gpu = f"{r['gpu_gib']:.2f}" if r["gpu_gib"] is not None else "-"
                    print(
                        f"{size:5} {name:27} {r['crops_per_s']:8.3f} {r['step_s']:7.2f} {r['host_gib']:9.2f} "
                        f"{gpu:>8} {speed:>8} {mem:>9}",
                        flush=True,
                    )
                if results and task == "brainsegfounder":
                    read = next(iter(results.values()))["read_s"]
                    print(f"{size:5} reading one 1 mm subject (2 contrasts) and cropping: {read:.2f} s in one process")
                if "ours" in results and size != "tiny":  # a tiny network says nothing of the real cost
                    estimates.append((task, architecture, size, roi, results["ours"]["crops_per_s"]))
    for task, architecture, size, roi, rate in estimates:
        published_roi, (volumes, per_volume), schedule = PUBLISHED[task]
        scale = math.prod(published_roi) / math.prod(roi)
        note = "" if scale == 1 else f" (measured at {'x'.join(map(str, roi))}, scaled by the voxel ratio {scale:.2f})"
        if task == "brainsegfounder":
            text = estimate(rate / scale, volumes * per_volume)
        else:
            hours = schedule * volumes * per_volume / (rate / scale) / 3600
            text = f"{schedule:,} steps x {volumes * per_volume} crops on one device: {hours:,.1f} device-hours"
        print(f"{task} on {architecture} {size}, ours on this device{note}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
