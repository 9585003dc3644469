"""One process or many: the same code under ``python`` and under ``torchrun`` (DDP).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; then each process takes GPU LOCAL_RANK
(NCCL) or, without GPUs, the CPU (gloo). Only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from brainsegfounder.errors import UserError
from brainsegfounder.inference import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_name: str = "auto") -> Dist:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=resolve_device(device_name))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {local_rank} on this node has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def any_flag(flag: bool, d: Dist) -> bool:
    """True on every rank if it is true on any (e.g. one process was asked to stop)."""
    if not d.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather(obj, d: Dist) -> list:
    """Every rank's ``obj`` (a picklable value), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def mean_scalar(value: float, d: Dist) -> float:
    if not d.enabled:
        return value
    return float(sum(gather(value, d)) / d.world)


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def teardown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
