"""Pretraining throughput: crops per second and peak memory, ours against the original's settings.

Runs, in one invocation, each configuration in a fresh process (so peak memory is its own)
on the same crops of a synthetic healthy subject (1 mm, UK Biobank grid, read through the
pretraining data path):

* reference: as BrainSegFounder ran: fp32, no gradient checkpointing, autograd anomaly
  detection on, the two views through the network one after the other, explicit attention,
  negatives from the own GPU only;
* ours: the stage-1 recipe: AMP (bf16) on CUDA, gradient checkpointing, scaled-dot-product
  attention, both views in one batch;
* ours without checkpointing: the speed bought back with memory where memory allows.

and prints crops/s, peak memory (host RSS; GPU allocated) and the ratio to the reference,
then what stage 1 on 41,400 subjects would cost at the original's 100k steps.

    python Testing/benchmarks/pretrain_throughput.py              # CPU: 64^3, 1 volume x 2 crops
    python Testing/benchmarks/pretrain_throughput.py --device cuda  # GPU: 96^3, 2 volumes x 2 crops
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
ORIGINAL_STEPS = 100_000
ORIGINAL_GPUS = 64  # the smallest of BrainSegFounder's 64-128 GPU runs
COHORT = 41_400


def crops_of_a_subject(roi, n_crops: int, batch: int):
    """``batch`` volumes' worth of crops (batch * n_crops, C, *roi) from a synthetic healthy subject."""
    import torch

    from brainsegfounder.synth.cohort import write_cohort
    from brainsegfounder_training.pretraining.data import CropStream
    from brainsegfounder_training.pretraining.subjects import discover_subjects

    with tempfile.TemporaryDirectory() as tmp:
        root = write_cohort(Path(tmp) / "ukb", kind="healthy", n=1, seed=9, spacing=1.0)
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
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    host = peak_host_memory_gib()  # the harness's portable measure (getrusage in its platform's unit)
    return {
        "crops_per_s": crops.shape[0] * steps / elapsed,
        "step_s": elapsed / steps,
        "host_gib": host,
        "gpu_gib": gpu,
        "read_s": read_s,
    }


def estimate(crops_per_s: float, crops_per_step: int) -> str:
    total = ORIGINAL_STEPS * crops_per_step * ORIGINAL_GPUS
    hours = total / crops_per_s / 3600
    gpus = math.ceil(hours / 24)
    one = ORIGINAL_STEPS * crops_per_step / crops_per_s / 3600
    return (
        f"{ORIGINAL_STEPS:,} steps x {crops_per_step} crops x {ORIGINAL_GPUS} GPUs = {total / 1e6:.1f}M crops "
        f"({total / COHORT:.0f} per subject of {COHORT:,}): {hours:,.0f} device-hours; under 24 h with "
        f"{gpus} devices (linear DDP scaling assumed). The same 100k steps on one device: {one:,.1f} h."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sizes", default="62M,64M")
    parser.add_argument("--roi", type=int, help="crop side (default 96 on CUDA, 64 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 10 on CUDA, 1 on CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    # Testing/gpu/check.sh --dry-run: the script's own check on a CPU in seconds
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--window", type=int, help="attention window (default the network's, 7)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    roi = (args.roi or (96 if cuda else 64),) * 3
    batch, n_crops = (2, 2) if cuda else (1, 2)
    steps = args.steps or (10 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.one:
        name, size = args.one.split("|")
        print(json.dumps(run_variant(name, size, roi, n_crops, batch, steps, warmup, args.device, args.window)))
        return 0

    import torch

    device_text = (
        torch.cuda.get_device_name(0)
        if cuda
        else f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    print(
        f"pretraining throughput on {device_text}; {'x'.join(map(str, roi))} crops, {batch} volume(s) x "
        f"{n_crops} crops per step (x2 views), {steps} timed steps after {warmup} warm-up"
    )
    print(
        f"{'size':5} {'configuration':27} {'crops/s':>8} {'s/step':>7} {'host GiB':>9} {'GPU GiB':>8} "
        f"{'speed x':>8} {'GPU mem x':>9}"
    )
    ours_rate = {}
    for size in args.sizes.split(","):
        results = {}
        for name in args.variants.split(","):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--roi",
                    str(roi[0]),
                    "--steps",
                    str(steps),
                    "--warmup",
                    str(warmup),
                    *(["--window", str(args.window)] if args.window else []),
                    "--one",
                    f"{name}|{size}",
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                reason = "out of memory" if "out of memory" in proc.stderr.lower() else proc.stderr.strip()[-300:]
                print(f"{size:5} {name:27} failed: {reason}")
                continue
            r = results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            ref = results.get("reference")
            speed = f"{r['crops_per_s'] / ref['crops_per_s']:.2f}" if ref else "-"
            mem = f"{r['gpu_gib'] / ref['gpu_gib']:.2f}" if ref and r["gpu_gib"] else "-"
            gpu = f"{r['gpu_gib']:.2f}" if r["gpu_gib"] is not None else "-"
            print(
                f"{size:5} {name:27} {r['crops_per_s']:8.3f} {r['step_s']:7.2f} {r['host_gib']:9.2f} {gpu:>8} "
                f"{speed:>8} {mem:>9}",
                flush=True,
            )
        if "ours" in results:
            ours_rate[size] = results["ours"]["crops_per_s"]
        if results:
            read = next(iter(results.values()))["read_s"]
            print(f"{size:5} reading one 1 mm subject (2 contrasts) and cropping: {read:.2f} s in one process")
    crops_per_gpu_step = 4  # BrainSegFounder: 2 volumes x 2 crops per GPU
    for size, rate in ours_rate.items():
        scale = (96 / roi[0]) ** 3
        note = (
            "" if roi[0] == 96 else f" (measured at {roi[0]}^3, scaled by (96/{roi[0]})^3 = {scale:.2f} for 96^3 crops)"
        )
        print(f"stage 1 estimate, {size} ours on this device{note}: {estimate(rate / scale, crops_per_gpu_step)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
