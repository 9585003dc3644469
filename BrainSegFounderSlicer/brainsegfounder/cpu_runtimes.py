"""The network on the CPU through an exported graph: OpenVINO (the CPU default) or ONNX Runtime.

Measured per 128^3 window of the 62M SwinUNETR on this project's 2-core AVX512-BF16 CPU
(Testing/benchmarks/inference_speed.py has the whole-case figures): OpenVINO in fp32 runs the
same graph about 2.5x faster than PyTorch's eager fp32 forward, ONNX Runtime about 1.7x;
dynamic int8 quantisation of the linear layers in PyTorch gained nothing (the decoder's
convolutions dominate) and cost 0.02 in logits, so it is not offered.

The network is exported once per model file and window size (ONNX, opset 18, a fixed shape of
one window), beside the model in ``.brainsegfounder/exports/`` (or in the user's
``~/.brainsegfounder/exports/`` where the model's folder is read-only), atomically. Before an
export is used the first time, a check window runs through it and through PyTorch: a
probability that differs by more than :data:`TOLERANCE` rejects it, and so does any failure
to export, load or compile, each time with a note, and the run continues in PyTorch. Each
runtime's check is recorded beside the export with the file's size and modification time: a
file changed since is exported and checked again. OpenVINO caches its compiled model in the
same folder (compiling the 62M graph takes about 45 s the first time, 3 s from the cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .atomic import STATE_DIR, atomic_path
from .errors import UserError
from .paths import sha256_of
from .progress import ProgressCallback, null_progress

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
SITE_DEFAULT_VARIABLE = "BRAINSEGFOUNDER_CPU_RUNTIME"  # what "auto" means on the CPU, where set
EXPORT_FORMAT = 1  # part of each export's name: raise it when the exported graph changes
TOLERANCE = 1e-3  # largest difference in probability from PyTorch on the check window
_PACKAGES = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnxruntime", "onnx")}


def installed(runtime: str) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in _PACKAGES[runtime])


def resolve_runtime(asked: str, device) -> str:
    """The runtime to run: 'auto' is OpenVINO on the CPU where it is installed, else PyTorch;
    on a GPU always PyTorch (autocast there is faster than any exported CPU graph)."""
    if asked not in RUNTIMES:
        raise UserError(f"runtime must be one of {', '.join(RUNTIMES)}, got {asked!r}")
    if asked == "torch":
        return "torch"
    if device.type != "cpu":
        if asked == "auto":
            return "torch"
        raise UserError(f"--runtime {asked} runs on the CPU only; use --device cpu, or --runtime torch on {device}")
    if asked == "auto":
        site = os.environ.get(SITE_DEFAULT_VARIABLE, "")
        if site:  # a site's own default for 'auto' (e.g. torch where OpenVINO misbehaves), said once here
            if site not in RUNTIMES[1:]:
                raise UserError(f"{SITE_DEFAULT_VARIABLE}={site!r}; set it to one of {', '.join(RUNTIMES[1:])}")
            return resolve_runtime(site, device)
        return "openvino" if installed("openvino") else "torch"
    if not installed(asked):
        packages = " ".join(_PACKAGES[asked])
        raise UserError(f"--runtime {asked} needs the Python packages {packages}: pip install {packages}")
    return asked


def export_folder(model_path: os.PathLike) -> Path:
    """Beside the model where its folder is writable, else in the user's brainsegfounder home."""
    from .registry import home

    beside = Path(model_path).resolve().parent
    if os.access(beside, os.W_OK):
        return beside / STATE_DIR / "exports"
    return home() / "exports"


@dataclass
class ExportedNetwork:
    """A window-at-a-time callable on torch batches (N, C, *roi) -> logits, run by ``run``."""

    run: Callable
    runtime: str
    precision: str

    def to(self, device):
        """It runs on the CPU only (the caller moves the batches); kept module-like for the caller."""
        return self

    def __call__(self, batch):
        import torch

        outputs = [torch.from_numpy(self.run(sample[None].contiguous().numpy())) for sample in batch.float()]
        return torch.cat(outputs)


@dataclass
class CpuRuntime:
    """Prepares the exported network of one model file for each window size and precision
    asked, once per process. ``build_source`` makes the model's plain PyTorch network (the
    one exported and checked against; built only when an export is made)."""

    build_source: Callable
    model_path: Path
    in_channels: int
    runtime: str
    threads: int = 1
    network_config: Optional[dict] = None  # part of the export's identity beside the file's hash
    _prepared: Dict[tuple, ExportedNetwork] = field(default_factory=dict)
    _digest: Optional[str] = None

    def network_for(
        self, roi: Sequence[int], precision: str, progress: ProgressCallback = null_progress
    ) -> Tuple[Optional[ExportedNetwork], List[str]]:
        """The exported network for windows of ``roi``, or None and a note saying why the run
        stays in PyTorch."""
        roi = tuple(int(r) for r in roi)
        key = (roi, precision)
        if key in self._prepared:
            return self._prepared[key], []
        try:
            onnx_path = self._checked_export(roi, progress)
            run, ran_precision = _compile(self.runtime, onnx_path, precision, self.threads)
        except _Rejected as why:
            return None, [f"the {self.runtime} runtime was not used ({why}); ran with PyTorch"]
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            return None, [f"the {self.runtime} runtime failed ({reason}); ran with PyTorch"]
        self._prepared[key] = ExportedNetwork(run, self.runtime, ran_precision)
        return self._prepared[key], []

    def _checked_export(self, roi: Tuple[int, ...], progress: ProgressCallback) -> Path:
        if self._digest is None:  # the file's content and how it is built (a merge order given at load)
            config = json.dumps(self.network_config or {}, sort_keys=True)
            self._digest = hashlib.sha256(f"{sha256_of(self.model_path)} {config}".encode()).hexdigest()
        folder = export_folder(self.model_path)
        name = f"{self.model_path.stem}-{self._digest[:16]}-{'x'.join(map(str, roi))}-f{EXPORT_FORMAT}"
        onnx_path, record_path = folder / f"{name}.onnx", folder / f"{name}.json"
        record = _record_of(record_path, onnx_path)  # {} where the export is missing or changed since
        if self.runtime in record.get("checked", {}):
            return onnx_path
        import torch

        source = self.build_source()
        exported_now = not record
        if exported_now:
            folder.mkdir(parents=True, exist_ok=True)
            progress("export", 0, 1, f"exporting the network for {self.runtime} (once per model and window size)")
            example = torch.zeros(1, self.in_channels, *roi)
            with atomic_path(onnx_path) as tmp, torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches
                torch.onnx.export(
                    source, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                    opset_version=18, dynamo=False,
                )  # fmt: skip
        # Each runtime is checked on its own: the same graph could run differently in another.
        difference = self._check(source, onnx_path, roi)
        del source
        if difference > TOLERANCE:
            if exported_now:
                with contextlib.suppress(OSError):
                    onnx_path.unlink()
            raise _Rejected(f"its export differs from PyTorch by {difference:.1e} in probability")
        stat = onnx_path.stat()
        record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checked": record.get("checked", {})}
        record["checked"][self.runtime] = {"max_probability_difference": difference}
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        progress("export", 1, 1)
        return onnx_path

    def _check(self, source, onnx_path: Path, roi: Tuple[int, ...]) -> float:
        """Largest probability difference between the export (in fp32) and PyTorch on a window
        of noise (it reaches every weight as well as an image would)."""
        import torch

        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, self.in_channels, *roi, generator=generator)
        with torch.inference_mode():
            expected = torch.sigmoid(source(x)).numpy()
        run, _ = _compile(self.runtime, onnx_path, "fp32", self.threads)
        got = 1 / (1 + _exp(-run(x.numpy())))
        return float(abs(got - expected).max())


class _Rejected(Exception):
    """An export that exists but must not be used (it does not compute the model's function)."""


def _exp(array):
    import numpy as np

    return np.exp(np.clip(array, -80, 80))


def _record_of(record_path: Path, onnx_path: Path) -> dict:
    """The export's record if it describes the file as it is now (size, modification time), else {}."""
    try:
        record = json.loads(record_path.read_text())
        stat = onnx_path.stat()
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or (record.get("size"), record.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return {}
    return record


def _compile(runtime: str, onnx_path: Path, precision: str, threads: int) -> Tuple[Callable, str]:
    """(run(array) -> logits array, the precision it runs in) for the exported graph."""
    if runtime == "openvino":
        import openvino

        core = openvino.Core()
        core.set_property({"CACHE_DIR": str(onnx_path.parent / "openvino-cache")})
        # OpenVINO would pick bf16 by itself on CPUs that have it: fp32 must be asked for.
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = core.compile_model(
            str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": hint}
        )
        # What it chose (a CPU without bf16 runs f32 whatever the hint): a Type, e.g. <Type: 'bfloat16'>
        ran = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16 else "fp32"
        return (lambda array: compiled(array)[0]), ran
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its notes on constant folding are not the user's concern
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return (lambda array: session.run(None, {"image": array})[0]), "fp32"  # no bf16 kernels on the CPU
