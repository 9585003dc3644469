"""One process of the two-process gathered-negatives check in test_pretraining_parts.py,
started as a plain process with RANK and WORLD_SIZE, as torchrun starts ranks. It exits
non-zero if the process aborts after its work (as the gloo backward of torch's own all_gather
did about one time in six)."""

import os
import sys

import torch
import torch.distributed as dist

from brainsegfounder_training.pretraining.pretext import nt_xent

if __name__ == "__main__":
    init_file, out = sys.argv[1:3]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    z1, z2 = torch.randn(world * 2, 8), torch.randn(world * 2, 8)
    mine1 = z1[rank * 2 : (rank + 1) * 2].clone().requires_grad_()
    mine2 = z2[rank * 2 : (rank + 1) * 2].clone().requires_grad_()
    loss = nt_xent(mine1, mine2, 0.5, gather=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "g1": mine1.grad, "g2": mine2.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()
