"""tcmalloc for child processes that train on the CPU.

glibc's malloc hands each large tensor's pages back to the kernel when it is freed and faults
them in again at the next step: a tiny SwinUNETR fine-tuning on one CPU thread spent 36% of its
CPU time in the kernel (16.5 M page faults). With tcmalloc preloaded, which keeps freed pages,
the same run took 1.6x less CPU time (98 s against 156 s), with the same Dice to the last digit
(``Testing/benchmarks/allocator.py``); the label-efficiency study's whole small grid, 1.75x.
An allocator must be chosen before the process starts, so it applies to the children a runner
starts: ``LD_PRELOAD`` in their environment. ``BRAINSEGFOUNDER_ALLOCATOR=system`` keeps glibc's.

OpenVINO does not live with a preloaded tcmalloc: ``evaluate`` through it died of "double free
or corruption" in one run and hung in another (OpenVINO 2026.4, Debian 12's tcmalloc 2.10). So the
children get PyTorch as their CPU runtime for inference, and where the environment names another
runtime, no preload.
"""

from __future__ import annotations

import ctypes.util
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

from .cpu_runtimes import SITE_DEFAULT_VARIABLE as CPU_RUNTIME

CHOICE = "BRAINSEGFOUNDER_ALLOCATOR"
GLIBC = "glibc malloc"


def tcmalloc_library() -> Optional[str]:
    """tcmalloc's shared library when one is installed (Linux; Debian's ``libtcmalloc-minimal4``),
    else None."""
    if not sys.platform.startswith("linux"):
        return None
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def with_fast_allocator(env: Mapping[str, str]) -> Dict[str, str]:
    """``env`` with tcmalloc added to ``LD_PRELOAD`` and PyTorch as the CPU runtime, when tcmalloc
    is installed and ``env`` asks neither for the system allocator nor for another runtime."""
    env = dict(env)
    if env.get(CHOICE, "auto") == "system" or env.get(CPU_RUNTIME, "torch") != "torch":
        return env
    library = tcmalloc_library()
    if library and allocator_in(env) == GLIBC:
        env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
        env[CPU_RUNTIME] = "torch"
    return env


def allocator_in(env: Mapping[str, str]) -> str:
    """The allocator a child started with ``env`` uses: a preloaded library's name, or glibc's."""
    for path in env.get("LD_PRELOAD", "").split(":"):
        if "tcmalloc" in path or "jemalloc" in path:
            return Path(path).name
    return GLIBC
