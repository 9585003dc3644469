"""What a run asks of the machine it runs on: seeded random state and peak memory."""

from __future__ import annotations

import random
import sys
from typing import Dict, Optional

import numpy as np


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and PyTorch's global generators (weights drawn at start-up)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_host_memory_gib() -> Optional[float]:
    """This process's peak resident memory in GiB, as the OS keeps it: ``getrusage`` on Linux
    (KiB) and macOS (bytes), the peak working set on Windows (through psutil, when installed;
    Windows has no ``resource`` module). None where neither is available."""
    try:
        import resource
    except ImportError:
        try:
            import psutil
        except ImportError:
            return None
        return psutil.Process().memory_info().peak_wset / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def peak_memory_gib(device) -> Dict[str, float]:
    """Peak host memory and, on CUDA, peak GPU memory allocated (for the metrics log)."""
    out = {}
    host = peak_host_memory_gib()
    if host is not None:
        out["host_peak_rss_gib"] = round(host, 3)
    if device.type == "cuda":
        import torch

        out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out
