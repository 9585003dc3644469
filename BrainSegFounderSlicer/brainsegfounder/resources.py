"""What this machine lets a run use: CPU threads and free memory (host and GPU).

Containers and batch schedulers hand a process fewer CPUs and less memory than the machine
has; PyTorch sizes its thread pool by the machine's cores, which oversubscribes the CPUs
actually granted and slows every window. These helpers read the grant (CPU affinity, cgroup
quota, cgroup memory limit) so the engine sizes threads and windows by it.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Optional

from .errors import UserError

CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_quota() -> Optional[float]:
    """CPUs granted by a cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota``), or None."""
    text = _read(CGROUP / "cpu.max")
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota, period = _read(CGROUP / "cpu" / "cpu.cfs_quota_us"), _read(CGROUP / "cpu" / "cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cpus() -> int:
    """CPUs this process may run on: affinity mask, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def configure_threads(threads: Optional[int] = None) -> int:
    """Set PyTorch's intra-op threads: ``threads`` if given, else the usable CPUs when PyTorch's
    own default (the machine's physical cores) would exceed them. Returns the count in use."""
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    elif torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()


@contextlib.contextmanager
def thread_limit(threads: Optional[int] = None):
    """:func:`configure_threads` for the block only (a caller in the same process keeps its own)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield configure_threads(threads)
    finally:
        torch.set_num_threads(before)


def available_host_bytes() -> Optional[int]:
    """Memory a new allocation can get without swapping: MemAvailable, capped by a cgroup
    memory limit; None where neither can be read (then callers assume enough)."""
    available = None
    meminfo = _read(Path("/proc/meminfo"))
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    else:
        try:
            import psutil  # optional: macOS and Windows

            available = int(psutil.virtual_memory().available)
        except ImportError:
            return None
    limit, used = _read(CGROUP / "memory.max"), _read(CGROUP / "memory.current")
    if limit and limit != "max" and used:
        headroom = int(limit) - int(used)
        available = headroom if available is None else min(available, headroom)
    return available


def available_gpu_bytes(device) -> int:
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def compute_devices() -> list:
    """The devices inference can use, for people and panels: the CPU, then each CUDA GPU with its
    name and memory."""
    import torch

    found = [{"id": "cpu", "name": f"CPU ({usable_cpus()} cores usable)", "memory_gib": None}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(
                {"id": f"cuda:{index}", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
            )
    return found
