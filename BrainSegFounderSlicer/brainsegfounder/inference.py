"""Sliding-window inference with progress, cancellation, flip TTA, a memory plan and an
out-of-memory fallback.

Defaults (each measured by Testing/benchmarks/inference_speed.py): the window is the model's
training ROI (128^3 for BraTS: the network saw that context in fine-tuning); overlap 0.5 is
BrainSegFounder's validation setting, which on a brain-cropped BraTS case gives the same
window count as its test setting 0.6 far more often than not; gaussian blending weights
window centres over their borders, which removes the seams constant blending leaves.
Precision: autocast bf16 (fp16 where the GPU has no bf16) on CUDA; fp32 on the CPU unless
asked (bf16 there is faster only on CPUs with native bf16, and costs memory: see
:func:`auto_precision`). The memory plan picks a low-memory mode (smaller windows, one per
batch, output kept in host memory) when the free memory of the device would not hold the
default.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import resources
from .cpu_runtimes import RUNTIMES
from .errors import UserError
from .progress import CancelToken, ProgressCallback, null_progress
from .uncertainty import FlipStatistics, UncertaintyMap

BLEND_MODES = ("gaussian", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-native")  # bf16-native: bf16 where the device has it, else fp32
MEMORY_MODES = ("auto", "normal", "low")
SPACINGS = ("model", "input")
FLIP_COUNTS = (4, 8)
LOW_MEMORY_ROI = 96  # 62M on a BraTS case, CPU: 2.99 GiB peak for the whole run vs 4.32 GiB at 128^3 (measured)


@dataclass
class InferenceSettings:
    roi_size: Optional[Tuple[int, int, int]] = None  # None: the model's training ROI
    overlap: float = 0.5
    blend: str = "gaussian"
    sw_batch_size: Optional[int] = None  # None: 1 on the CPU, 2 on a GPU (see default_batch)
    tta: bool = False
    uncertainty: bool = False  # also the flips' variance (uncertainty.py); runs the flips of tta
    flips: int = 8  # with tta or uncertainty: the 8 mirror flips, or 4 (see flip_sets)
    threshold: float = 0.5
    precision: str = "auto"  # see auto_precision
    memory: str = "auto"  # auto: low when the device's free memory would not hold the default
    threads: Optional[int] = None  # CPU threads; None: the CPUs this process may use (resources.py)
    spacing: str = "model"  # model: run at the model's training voxel size; input: at the input's
    runtime: str = "auto"  # auto: OpenVINO on the CPU where installed, else PyTorch (cpu_runtimes.py)
    fast: bool = False  # the model's measured fast setting (fast_mode.py) for what is not in `explicit`
    explicit: Tuple[str, ...] = ()  # settings given explicitly, which the fast setting leaves alone

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.memory not in MEMORY_MODES:
            raise UserError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {self.memory!r}")
        if not 0 <= self.overlap < 1:
            raise UserError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in BLEND_MODES:
            raise UserError(f"blending must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise UserError("the window batch size must be at least 1")
        if self.roi_size is not None and any(int(r) % 32 or int(r) < 64 for r in self.roi_size):
            raise UserError(f"ROI {self.roi_size} is not usable: each side must be a multiple of 32, at least 64")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.spacing not in SPACINGS:
            raise UserError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if self.runtime not in RUNTIMES:
            raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.flips not in FLIP_COUNTS:
            raise UserError(f"flips must be one of {', '.join(map(str, FLIP_COUNTS))}, got {self.flips}")
        if not 0 < self.threshold < 1:
            raise UserError(f"threshold must be between 0 and 1, got {self.threshold}")


def resolve_device(name: str = "auto"):
    """'auto' -> the first CUDA GPU if there is one, else the CPU; checks what was asked for."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} asked for, but there are {torch.cuda.device_count()} GPUs")
    elif device.type != "cpu":
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows MONAI's sliding window takes over ``shape`` (after padding to ``roi``)."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        size = max(size, r)
        interval = r if size == r else max(int(r * (1 - overlap)), 1)
        total *= math.ceil((size - r) / interval) + 1
    return total


def flip_sets(tta: bool, count: int = 8) -> List[Tuple[int, ...]]:
    """Spatial axes (of an N, C, X, Y, Z tensor) to flip: with TTA all 8 mirror combinations, or
    4 (none, and each axis alone): half the passes, for an uncertainty map that found the demo
    model's errors about as well (ROC AUC 0.943 / 0.940 against 0.947 / 0.951 with 8 flips, two
    synthetic cases at 3 mm) and flagged much the same voxels (Dice 0.78 / 0.79 with the 8 flips'
    uncertain voxels); 2 flips (none, all axes) did worse: AUC 0.908 / 0.934, Dice 0.59 / 0.68."""
    if not tta:
        return [()]
    if count == 4:
        return [(), (2,), (3,), (4,)]
    return [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)]


@dataclass
class InferenceReport:
    device: str
    windows: int
    sw_batch_size: int
    roi: Tuple[int, int, int] = (0, 0, 0)
    precision: str = "fp32"
    memory_mode: str = "normal"
    threads: int = 1
    model_s: float = 0.0
    notes: List[str] = field(default_factory=list)
    spacing_mm: Tuple[float, ...] = ()  # the voxel size the network ran at
    runtime: str = "torch"  # what ran the network: torch, openvino or onnxruntime
    outside_tissue_fraction: float = 0.0  # of the labelled voxels, those outside the brain (dropped)
    variance: Optional[np.ndarray] = field(default=None, repr=False)  # per region over the flips, if asked
    uncertainty: Optional[UncertaintyMap] = field(default=None, repr=False)  # its map on the reference grid


def cpu_has_native_bf16() -> bool:
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def auto_precision(device, asked: str = "auto") -> str:
    """The precision to run: CUDA autocasts to bf16 (fp16 on GPUs without it); the CPU runs
    fp32 unless bf16 is asked for, or "bf16-native" (the fast mode) on a CPU with AVX512-BF16
    or AMX. Measured at a 128^3 window of the 62M model on a 2-core AVX512-BF16 CPU: bf16
    15.4 s vs fp32 21.5 s, but 3.6 vs 3.2 GiB peak (oneDNN keeps reordered copies)."""
    import torch

    if asked not in ("auto", "bf16-native"):
        return asked
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if asked == "bf16-native" and cpu_has_native_bf16() else "fp32"


def _autocast(device, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def estimate_peak_bytes(feature_size: int, roi: Sequence[int], sw_batch_size: int, volume_shape: Sequence[int]) -> int:
    """Memory one sliding-window pass needs beyond the weights: the low-memory forward's peak (measured
    6.5 full-resolution feature maps for the 62M model at 128^3, rounded up to 7) plus the
    float32 input, blended output and weight map of the (cropped) volume."""
    window = 7 * sw_batch_size * math.prod(roi) * feature_size * 4
    channels_in, *spatial = volume_shape
    buffers = (channels_in + 3 + 1) * math.prod(spatial) * 4
    return window + buffers


# An exported graph materialises what PyTorch's lean forward avoids (e.g. the shifted-window
# attention scores): whole runs of the 62M model at 128^3 on a BraTS case peaked at 5.9 GiB in
# OpenVINO against 3.9 GiB in PyTorch (brainsegfounder segment, /usr/bin/time).
EXPORTED_MEMORY_FACTOR = 1.5


def exported_memory_note(model, plan: "MemoryPlan", volume_shape: Sequence[int]) -> str:
    """Why the exported runtime is not used (free host memory would not hold its peak), or ''."""
    feature_size = _feature_size(model)
    free = resources.available_host_bytes()
    if feature_size is None or free is None:
        return ""
    need = EXPORTED_MEMORY_FACTOR * estimate_peak_bytes(feature_size, plan.roi, plan.sw_batch_size, volume_shape)
    if need <= 0.8 * free:
        return ""
    return (
        f"{free / 2**30:.1f} GiB of memory free, the exported CPU runtime needs about {need / 2**30:.1f} GiB: "
        "ran with PyTorch's leaner forward"
    )


@dataclass
class MemoryPlan:
    roi: Tuple[int, int, int]
    sw_batch_size: int
    mode: str
    output_on_host: bool
    note: str = ""


def plan_memory(
    settings: InferenceSettings,
    device,
    roi: Sequence[int],
    batch: int,
    feature_size: Optional[int],
    volume_shape: Sequence[int],
) -> MemoryPlan:
    """Normal settings, or the low-memory mode (windows of at most LOW_MEMORY_ROI, one per batch,
    the blended output in host memory) when asked or when free memory would not hold normal."""
    roi = tuple(int(r) for r in roi)
    if feature_size is None:  # not a network we can estimate: run as asked
        return MemoryPlan(roi, batch, "normal", False)
    low_roi = tuple(min(r, LOW_MEMORY_ROI) for r in roi)
    if settings.memory == "normal":
        return MemoryPlan(roi, batch, "normal", False)
    if settings.memory == "low":
        return MemoryPlan(low_roi, 1, "low", device.type == "cuda", "low-memory mode asked for")
    need = estimate_peak_bytes(feature_size, roi, batch, volume_shape)
    free = resources.available_gpu_bytes(device) if device.type == "cuda" else resources.available_host_bytes()
    if free is None or need <= 0.8 * free:
        return MemoryPlan(roi, batch, "normal", False)
    return MemoryPlan(
        low_roi,
        1,
        "low",
        device.type == "cuda",
        f"low-memory mode: {free / 2**30:.1f} GiB free on {device}, the default needs about "
        f"{need / 2**30:.1f} GiB; windows {'x'.join(map(str, low_roi))}, one per batch",
    )


def _sliding_probabilities(
    model, volume, roi, settings, sw_batch_size, device, progress, cancel, flips, shape, precision, output_device
):
    import torch
    from monai.inferers import sliding_window_inference

    windows = count_windows(shape, roi, settings.overlap)
    batches_per_pass = math.ceil(windows / sw_batch_size)
    total = batches_per_pass * len(flips)
    done = 0
    progress("inference", 0, total)

    def predictor(batch):
        nonlocal done
        cancel.check()
        with _autocast(device, precision):
            out = model(batch)
        done += 1
        progress("inference", done, total)
        return out.float()

    model = model.to(device)
    x = torch.from_numpy(volume[None]).to(device)
    stats = FlipStatistics(spread=settings.uncertainty)
    with torch.inference_mode():
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            logits = sliding_window_inference(
                xi,
                roi,
                sw_batch_size,
                predictor,
                overlap=settings.overlap,
                mode=settings.blend,
                sw_device=device,
                device=output_device,
            )
            p = torch.sigmoid_(logits)
            stats.add(torch.flip(p, axes) if axes else p)
        variance = stats.variance()
    return (
        stats.mean()[0].cpu().numpy(),
        None if variance is None else variance[0].cpu().numpy(),
        windows,
    )


def default_batch(device) -> int:
    """Windows per forward pass. On the CPU two windows per pass are no faster than one (the
    cores are already busy) but need 1.7x the memory: 7.3 vs 4.4 GiB peak for the 62M model
    at 128^3 on a BraTS case; a GPU gains from batching."""
    return 2 if device.type == "cuda" else 1


def fallback_plan(device, sw_batch_size: int):
    """(device, windows per batch) to try in turn when memory runs out: fewer windows per
    batch first, then (from a GPU) the CPU."""
    import torch

    plan = [(device, sw_batch_size)]
    if sw_batch_size > 1:
        plan.append((device, 1))
    if device.type == "cuda":
        plan.append((torch.device("cpu"), 1))
    return plan


def _feature_size(model) -> Optional[int]:
    """Channels of the first 3D convolution: SwinUNETR's patch embedding, i.e. its feature size.
    None for other networks (ResEncUNet, PCTNet): the peak estimate was measured on SwinUNETR."""
    import torch

    if not hasattr(getattr(model, "net", model), "swinViT"):
        return None
    return next((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv3d)), None)


def predict_probabilities(
    model,
    volume: np.ndarray,
    roi: Sequence[int],
    settings: InferenceSettings,
    device,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
    cpu_runtime=None,
) -> Tuple[np.ndarray, InferenceReport]:
    """Sigmoid probabilities (C_out, ...) for a normalised volume (C_in, ...).

    Plans memory first (:func:`plan_memory`); on out-of-memory retries as
    :func:`fallback_plan` says, reporting each step. ``cpu_runtime`` (a
    :class:`~brainsegfounder.cpu_runtimes.CpuRuntime`) runs the windows on the CPU through an
    exported graph instead of ``model``, which stays the fallback. With
    ``settings.uncertainty`` the report also holds the flips' variance (C_out, ...).
    """
    import torch

    cancel = cancel or CancelToken()
    flips = flip_sets(settings.tta or settings.uncertainty, settings.flips)
    plan = plan_memory(
        settings, device, roi, settings.sw_batch_size or default_batch(device), _feature_size(model), volume.shape
    )
    notes: List[str] = [plan.note] if plan.note and settings.memory == "auto" else []
    if notes:
        progress("inference", 0, 0, plan.note)
    attempts = fallback_plan(device, plan.sw_batch_size)
    for i, (dev, batch) in enumerate(attempts):
        precision = auto_precision(dev, settings.precision)
        output_device = torch.device("cpu") if plan.output_on_host else dev
        runner, runtime = model, "torch"
        if cpu_runtime is not None and dev.type == "cpu":
            short = exported_memory_note(model, plan, volume.shape)
            # The exported graph runs in bf16 by default where the CPU has it natively: for the 62M
            # model's 128^3 window in OpenVINO 4.4 vs 8.4 s and 3.6 vs 4.3 GiB against fp32, label
            # maps at Dice >= 0.999 (unlike PyTorch's bf16, which costs memory: auto_precision).
            asked = "bf16-native" if settings.precision == "auto" else settings.precision
            exported, why_not = (
                (None, [short]) if short else cpu_runtime.network_for(plan.roi, auto_precision(dev, asked), progress)
            )
            notes.extend(why_not)
            if exported is not None:
                runner, runtime, precision = exported, exported.runtime, exported.precision
        try:
            t0 = time.perf_counter()
            with resources.thread_limit(settings.threads) as threads:
                probs, variance, windows = _sliding_probabilities(
                    runner,
                    volume,
                    plan.roi,
                    settings,
                    batch,
                    dev,
                    progress,
                    cancel,
                    flips,
                    volume.shape[1:],
                    precision,
                    output_device,
                )
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return probs, InferenceReport(
                device=str(dev),
                windows=windows,
                sw_batch_size=batch,
                roi=plan.roi,
                precision=precision,
                memory_mode=plan.mode,
                threads=threads,
                model_s=time.perf_counter() - t0,
                notes=notes,
                runtime=runtime,
                variance=variance,
            )
        except torch.OutOfMemoryError:
            if i + 1 == len(attempts):
                raise UserError("out of memory even on the CPU; close other programs or use --memory low") from None
            next_dev, next_batch = attempts[i + 1]
            note = (
                f"out of memory on {dev} with {batch} windows per batch; retrying on {next_dev} "
                f"with {next_batch} window per batch"
            )
            notes.append(note)
            progress("inference", 0, 0, note)
            model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise AssertionError("unreachable")
