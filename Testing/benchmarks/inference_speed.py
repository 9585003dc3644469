"""Inference speed and memory: our default path against BrainSegFounder's test settings.

One process, one run, one synthetic BraTS-size case (4 x 240x240x155 at 1 mm, LPS, a seed
no model saw) and the same 62M weights for every row:

* reference: MONAI's sliding window as BrainSegFounder's test ran it: whole volume, 128^3
  windows, overlap 0.6, constant blending, fp32, explicit attention, sigmoid > 0.5; one
  window per batch (the kindest setting for the reference's memory);
* today's default: ``brainsegfounder segment --runtime torch`` (the PyTorch forward, fp32, as
  the default ran before the exported CPU runtimes);
* the new default: ``brainsegfounder segment`` (on the CPU: OpenVINO where installed, in bf16
  where the CPU has it natively, else fp32);
* the exported runtimes' other rows: OpenVINO in fp32 (``--precision fp32``, where the default
  is bf16), ONNX Runtime (``--runtime onnxruntime``, where installed) and PyTorch in bf16
  (``--runtime torch --precision bf16``, on CPUs with native bf16);
* with ``--compile MODE``: the PyTorch network under ``torch.compile`` (``reduce-overhead`` takes
  CUDA graphs), run twice: the first run's extra time is the compile's cost, reported with
  whether the row pays against the new default (kept off in the product until it does);
* ours, fast mode (``--fast``), low memory, and with test-time augmentation (``--tta``) and the
  uncertainty map (``--uncertainty``, 8 and 4 flips) with ``--tta``.

The one-time cost of an exported runtime (export, check against PyTorch, first compile) is
paid before the rows and printed on its own: the rows show what every later run costs.

For each row: windows, model seconds (the sliding window alone), achieved GFLOP/s of the
network (PyTorch's FLOP counter on one window, times windows, over model seconds), files-in to files-out
seconds (read, preprocess, infer, write the label map), peak host memory (RSS, sampled)
and peak GPU memory while the row ran, the speed ratio to the reference (files-in to
files-out) and the Dice of each region against the reference's label map (MONAI Dice).
Ours runs first so that its host figure holds none of the reference's memory.

    python Testing/benchmarks/inference_speed.py --checkpoint MODEL.pt [--device cuda] [--tta]

MODEL.pt is a 62M BraTS model: BrainSegFounder's released fine-tuned file, or the synthetic
one Training/configs/bench-62m.yaml trains. Untrained weights give valid times but
meaningless agreement (their outputs sit at 0.5), so the script refuses them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BrainSegFounderSlicer"))

REFERENCE = dict(roi=(128, 128, 128), overlap=0.6, blend="constant")
BRATS_SIZE = (240, 240, 155)


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 5 ms), and
    peak GPU memory allocated by PyTorch."""

    def __init__(self, device):
        self.device, self.host_gib, self.gpu_gib = device, 0.0, None
        self._stop = threading.Event()

    @staticmethod
    def rss_gib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def _sample(self):
        while not self._stop.is_set():
            self.host_gib = max(self.host_gib, self.rss_gib())
            self._stop.wait(0.005)

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.host_gib = max(self.host_gib, self.rss_gib())
        if self.device.type == "cuda":
            self.gpu_gib = torch.cuda.max_memory_allocated(self.device) / 2**30


def synthetic_case(folder: Path, seed: int, spacing: float = 1.0):
    """{modality: path} of one BraTS-size synthetic case and its ground-truth label path."""
    from brainsegfounder.synth.cohort import case_files, write_cohort

    write_cohort(folder, kind="brats", n=1, seed=seed, spacing=spacing, folds=1)
    _case, images, label = case_files("brats2021", 0)
    return {m: folder / rel for m, rel in images.items()}, folder / label


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(checkpoint, paths, output: Path, device):
    """BrainSegFounder's test inference, files in to files out. Returns (model s, total s, windows)."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import NormalizeIntensity

    from brainsegfounder.checkpoints import network_from_checkpoint
    from brainsegfounder.inference import count_windows

    model = network_from_checkpoint(checkpoint, use_flash_attention=False).eval().to(device)
    start = time.perf_counter()
    images = [sitk.ReadImage(str(p)) for p in paths.values()]
    volume = np.stack([sitk.GetArrayFromImage(im).transpose(2, 1, 0) for im in images]).astype(np.float32)
    volume = NormalizeIntensity(nonzero=True, channel_wise=True)(volume)
    x = torch.as_tensor(np.asarray(volume))[None].to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = sliding_window_inference(
            x, REFERENCE["roi"], 1, model, overlap=REFERENCE["overlap"], mode=REFERENCE["blend"]
        )
    sync(device)
    model_s = time.perf_counter() - t0
    tc, wt, et = (torch.sigmoid(logits[0]) > 0.5).cpu().numpy()
    labels = np.zeros(wt.shape, np.uint8)  # BrainSegFounder's order: WT -> 2, then TC -> 1, then ET -> 4
    labels[wt], labels[tc], labels[et] = 2, 1, 4
    image = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    image.CopyInformation(images[0])
    sitk.WriteImage(image, str(output), useCompression=True)
    return model_s, time.perf_counter() - start, count_windows(volume.shape[1:], REFERENCE["roi"], REFERENCE["overlap"])


def _passes(info: dict) -> int:
    """Forward passes per window: one, or one per mirror flip (--tta, --uncertainty)."""
    return info["flips"] if info["tta"] or info["uncertainty"] else 1


def run_ours(segmenter, paths, output: Path):
    """``brainsegfounder segment``'s path, files in to files out. Returns (total s, what it ran)."""
    from brainsegfounder.segment import segment_files

    uncertainty = output.with_name(f"uncertainty-{output.name}") if segmenter.settings.uncertainty else None
    start = time.perf_counter()
    summary = segment_files(
        "", list((m, str(p)) for m, p in paths.items()), output, segmenter=segmenter, uncertainty_path=uncertainty
    )
    sync(segmenter.device)
    return time.perf_counter() - start, summary["inference"]


def agreement(prediction: Path, reference: Path):
    import SimpleITK as sitk

    from brainsegfounder.demo import dice_per_region
    from brainsegfounder.labels import schema

    return dice_per_region(sitk.ReadImage(str(prediction)), sitk.ReadImage(str(reference)), schema("brats_regions"))


def warm_up(segmenter):
    """One window through each attention path, so neither row pays one-off kernel set-up."""
    import torch

    from brainsegfounder.checkpoints import network_from_checkpoint

    x = torch.zeros(1, segmenter.checkpoint.network.in_channels, *REFERENCE["roi"], device=segmenter.device)
    with torch.inference_mode():
        for net in (
            segmenter.network.to(segmenter.device),
            network_from_checkpoint(segmenter.checkpoint).eval().to(segmenter.device),
        ):
            net(x)
    sync(segmenter.device)


class WindowFlops:
    """FLOPs of one window of the model per window size (PyTorch's counter on one forward of a
    network built for it, let go afterwards so that no row's memory holds it)."""

    def __init__(self, checkpoint, device):
        self.checkpoint, self.device, self.known = checkpoint, device, {}

    def __call__(self, roi) -> float:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from brainsegfounder.checkpoints import network_from_checkpoint

        roi = tuple(roi)
        if roi not in self.known:
            network = network_from_checkpoint(self.checkpoint, use_flash_attention=True).eval().to(self.device)
            x = torch.zeros(1, self.checkpoint.network.in_channels, *roi, device=self.device)
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                network(x)
            self.known[roi] = counter.get_total_flops()
        return self.known[roi]


def prepare_exports(make, device, roi, precisions):
    """Export, check and compile each exported runtime once (what a model's first CPU run pays);
    returns {runtime: seconds}. ``make(overrides)`` makes a Segmenter."""
    from brainsegfounder.cpu_runtimes import installed

    seconds = {}
    if device.type != "cpu":
        return seconds
    for runtime in ("openvino", "onnxruntime"):
        segmenter = make({"runtime": runtime}) if installed(runtime) else None
        if segmenter is None or segmenter.cpu_runtime is None:
            continue
        t0 = time.perf_counter()
        for precision in precisions if runtime == "openvino" else ("fp32",):
            network, notes = segmenter.cpu_runtime.network_for(roi, precision)
            if network is None:
                print(f"  {runtime}: {notes[0]}", flush=True)
        seconds[runtime] = time.perf_counter() - t0
        del segmenter
        gc.collect()
    return seconds


COMPILE = "torch.compile"  # the row name's mark and its overrides' key


def rows_to_run(args, device):
    """(row name, InferenceSettings overrides) in the order they run."""
    from brainsegfounder.cpu_runtimes import installed, resolve_runtime
    from brainsegfounder.inference import cpu_has_native_bf16

    cpu = device.type == "cpu"
    new_default = "torch" if args.no_cpu_runtimes else resolve_runtime("auto", device)
    exported_bf16 = cpu and new_default != "torch" and cpu_has_native_bf16()  # the exported default's precision
    rows = [("today's default (PyTorch fp32)", {"runtime": "torch"})] if new_default != "torch" else []
    precision = "bf16" if exported_bf16 else "fp32" if cpu else "autocast"
    rows.append((f"new default ({new_default}, {precision})", {"runtime": "torch"} if args.no_cpu_runtimes else {}))
    if exported_bf16:
        rows.append((f"{new_default} fp32 (--precision fp32)", {"precision": "fp32"}))
    if cpu and installed("onnxruntime") and not args.no_cpu_runtimes:
        rows.append(("ONNX Runtime fp32 (--runtime onnxruntime)", {"runtime": "onnxruntime"}))
    if cpu and cpu_has_native_bf16() and "torch-bf16" in args.rows:
        rows.append(("PyTorch bf16 (--runtime torch --precision bf16)", {"precision": "bf16", "runtime": "torch"}))
    if args.compile:  # the new default's PyTorch network under torch.compile (CUDA graphs in reduce-overhead)
        rows.append((f"ours + torch.compile ({args.compile})", {"runtime": "torch", COMPILE: args.compile}))
    if "fast" in args.rows:
        rows.append(("ours, fast mode (--fast)", "fast"))
    if "low-memory" in args.rows:
        rows.append(("ours, low memory (--memory low)", {"memory": "low"}))
    if args.tta:
        rows.append(("ours + TTA (--tta)", {"tta": True}))
        rows.append(("ours + uncertainty map (--uncertainty)", {"uncertainty": True}))
        rows.append(("ours + uncertainty map, 4 flips (--flips 4)", {"uncertainty": True, "flips": 4}))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained 62M BraTS model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--tta", action="store_true", help="also time ours with 8-flip test-time augmentation")
    parser.add_argument(
        "--rows",
        type=lambda text: set(text.split(",")),
        default={"fast", "low-memory", "torch-bf16"},
        help="optional rows to run, comma-separated (default fast,low-memory,torch-bf16)",
    )
    parser.add_argument("--no-fast", action="store_true", help="leave out the fast-mode row")
    parser.add_argument(
        "--compile",
        metavar="MODE",
        help="add a row with the network under torch.compile in this mode (reduce-overhead: CUDA graphs); its "
        "compile time is measured as the first run's extra time and reported",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend (eager: no code generated, the dry run's check of the row itself)",
    )
    parser.add_argument("--seed", type=int, default=4242, help="seed of the synthetic case")
    parser.add_argument("--keep", help="keep the case and the label maps in this folder")
    # Testing/gpu/check.sh --dry-run: the script's own check on a CPU, a tiny model on a small case
    parser.add_argument("--case-spacing", type=float, default=1.0, help="voxel size of the case in mm (1: BraTS)")
    parser.add_argument("--any-size", action="store_true", help="take a BraTS model of any size, not only 62M")
    parser.add_argument(
        "--no-cpu-runtimes",
        action="store_true",
        help="leave out the exported CPU runtimes (OpenVINO, ONNX Runtime), their rows and exports: on a CPU, "
        "the rows a GPU run has",
    )
    parser.add_argument("--roi", type=int, default=128, help="window side of every row (128: the released weights')")
    args = parser.parse_args()
    REFERENCE["roi"] = (args.roi,) * 3
    if args.no_fast:
        args.rows.discard("fast")

    import torch

    from brainsegfounder.checkpoints import load_checkpoint, resolve_meta
    from brainsegfounder.inference import InferenceSettings, cpu_has_native_bf16
    from brainsegfounder.segment import Segmenter

    checkpoint = load_checkpoint(args.checkpoint)
    meta = resolve_meta(checkpoint, "brats")
    # The reference is BrainSegFounder's own SwinUNETR test: the model must be a SwinUNETR (any size: --any-size).
    swin = checkpoint.network.NAME == "SwinUNETR"
    if meta.task != "brats" or not swin or (checkpoint.network.feature_size != 48 and not args.any_size):
        print(
            f"{args.checkpoint} is not a 62M-class BraTS SwinUNETR (feature size 48, 4 inputs); it is a "
            f"{checkpoint.network.NAME} for task {meta.task}",
            file=sys.stderr,
        )
        return 2
    if meta.version.endswith("untrained"):
        print(
            f"{args.checkpoint} holds untrained weights: their outputs sit at 0.5 and the agreement would mean "
            "nothing; train one with Training/configs/bench-62m.yaml",
            file=sys.stderr,
        )
        return 2
    # The released 62M weights were trained at 128^3, so ours runs at 128^3 whatever ROI a stand-in carries.
    roi = REFERENCE["roi"] if tuple(meta.roi_size) != REFERENCE["roi"] else None

    def make(overrides):
        if overrides == "fast":
            return Segmenter(args.checkpoint, task="brats", device=args.device, settings=InferenceSettings(fast=True))
        overrides = dict(overrides)
        mode = overrides.pop(COMPILE, None)
        settings = InferenceSettings(roi_size=roi, **overrides)
        segmenter = Segmenter(args.checkpoint, task="brats", device=args.device, settings=settings)
        if mode:
            segmenter.network = torch.compile(segmenter.network, mode=mode, backend=args.compile_backend)
        return segmenter

    rows = [
        (name, make(overrides) if i == 0 else overrides)
        for i, (name, overrides) in enumerate(rows_to_run(args, torch.device(args.device)))
    ]
    first = rows[0][1]
    device = first.device
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    )
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bsf-bench-"))
    paths, truth = synthetic_case(folder / "case", args.seed, args.case_spacing)
    case_text = (
        f"{'x'.join(map(str, BRATS_SIZE))} at 1 mm" if args.case_spacing == 1 else f"at {args.case_spacing:g} mm"
    )
    print(
        f"inference on {where}: {args.checkpoint} ({sum(p.numel() for p in first.network.parameters()):,} "
        f"parameters, trained at {'x'.join(map(str, meta.roi_size))}), one synthetic case "
        f"{case_text}, 4 inputs",
        flush=True,
    )
    warm_up(first)
    window_flops = WindowFlops(checkpoint, device)
    window_flops(REFERENCE["roi"])
    bf16 = ("bf16",) if cpu_has_native_bf16() else ()
    exports = {} if args.no_cpu_runtimes else prepare_exports(make, device, first.roi, ("fp32", *bf16))
    for runtime, seconds in exports.items():
        print(f"  {runtime}: export, check against PyTorch and first compile (once per model and ROI): {seconds:.1f} s")

    results, compiled = {}, {}
    for i, (name, seg) in enumerate(rows):
        if not isinstance(seg, Segmenter):
            gc.collect()
            seg = make(seg)
        output = folder / f"ours-{i}.nii.gz"
        compile_s = None
        if COMPILE in name:  # the first run compiles: its time over the second's is the compile's cost
            compile_s, _ = run_ours(seg, paths, output)
        with PeakMemory(device) as mem:
            total_s, info = run_ours(seg, paths, output)
        if compile_s is not None:
            compiled[name] = compile_s - total_s
        results[name] = dict(
            model_s=info["model_s"],
            total_s=total_s,
            windows=info["windows"],
            host=mem.host_gib,
            gpu=mem.gpu_gib,
            labels=output,
            info=info,
        )
        print(f"  ran {name}: {total_s:.1f} s", flush=True)
        rows[i] = seg = first = None
    gc.collect()
    with PeakMemory(device) as mem:
        model_s, total_s, windows = run_reference(checkpoint, paths, folder / "reference.nii.gz", device)
    ref = dict(
        model_s=model_s,
        total_s=total_s,
        windows=windows,
        host=mem.host_gib,
        gpu=mem.gpu_gib,
        labels=folder / "reference.nii.gz",
    )
    print(f"  ran the reference: {total_s:.1f} s", flush=True)

    print(
        f"\n{'path':44} {'windows':>7} {'model s':>8} {'GFLOP/s':>8} {'files s':>8} {'host GiB':>9} {'GPU GiB':>8}"
        f" {'speed x':>8} {'vs today':>8}"
        f"  {'Dice vs reference TC/WT/ET':28} Dice vs truth TC/WT/ET"
    )

    def dice_text(labels, other):
        d = agreement(labels, other)
        return f"{d['TC']:.4f}/{d['WT']:.4f}/{d['ET']:.4f}"

    today = next(iter(results.values()))
    for name, r in [("reference (BrainSegFounder test)", ref), *list(results.items())]:
        gpu = f"{r['gpu']:.2f}" if r["gpu"] is not None else "-"
        vs_ref = "-" if r is ref else dice_text(r["labels"], ref["labels"])
        roi, passes = (REFERENCE["roi"], 1) if r is ref else (r["info"]["roi_size"], _passes(r["info"]))
        rate = window_flops(roi) * r["windows"] * passes / r["model_s"] / 1e9
        print(
            f"{name:44} {r['windows']:7d} {r['model_s']:8.2f} {rate:8.1f} {r['total_s']:8.2f} {r['host']:9.2f} "
            f"{gpu:>8} {ref['total_s'] / r['total_s']:8.2f} {today['total_s'] / r['total_s']:8.2f}"
            f"  {vs_ref:28} {dice_text(r['labels'], truth)}"
        )
    print("\nDice against today's default's label map (TC/WT/ET):")
    for name, r in list(results.items())[1:]:
        print(f"  {name}: {dice_text(r['labels'], today['labels'])}")
    default = next(r for name, r in results.items() if name.startswith("new default"))
    for name, extra_s in compiled.items():
        gain_s = default["total_s"] - results[name]["total_s"]
        verdict = (
            f"pays: {gain_s:.2f} s a case faster, the compile repaid after {max(extra_s, 0) / gain_s:.0f} case(s)"
            if gain_s > 0.05 * default["total_s"]
            else "does not pay (under 5% faster than the new default): not kept"
        )
        print(f"\n{name}: compile {extra_s:.1f} s (the first run's extra time); {verdict}")
    print("\nreference: whole volume, 128^3, overlap 0.6, constant blending, fp32, explicit attention, 1 window/batch")
    for name, r in results.items():
        info = r["info"]
        print(
            f"{name}: brain crop ({info['brain_box_fraction']:.0%} of the volume), ROI "
            f"{'x'.join(map(str, info['roi_size']))}, overlap {info['overlap']}, {info['blend']} blending, "
            f"{info['precision']}, memory mode {info['memory_mode']}, {info['threads']} threads, "
            f"{info['sw_batch_size']} window(s)/batch, SDPA attention, lean forward"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
