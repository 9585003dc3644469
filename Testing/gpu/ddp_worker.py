"""One fine-tuning or pretraining step as the only process of a DDP world (test_gpu.py).

Started with RANK=0, WORLD_SIZE=1 and MASTER_ADDR/PORT, as ``torchrun --nproc_per_node=1``
starts it. The harness treats a world of one as no DDP at all (``distributed.setup``), and
NCCL cannot put two processes on one GPU, so on a one-GPU machine DDP over NCCL is only
reached by forcing it: this process joins the process group itself and hands the run a
``Dist`` that says DDP is on. Everything after that is the harness's own code.

    python ddp_worker.py finetune|pretrain DATA RUN_FOLDER cuda|cpu [RECIPE_OVERRIDE ...]

Prints one JSON line: the wrapper the model got, the backend, the steps and the device.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from brainsegfounder_training.harness import distributed, run_loop
from brainsegfounder_training.harness.run_folder import RunFolder


class WorldOfOne(distributed.Dist):
    @property
    def enabled(self) -> bool:
        return True


def main(kind: str, data: str, out: str, device_type: str, *overrides: str) -> int:
    """``overrides``: the recipe settings of the run (test_gpu.py passes its quick ones)."""
    cuda = device_type == "cuda"
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    facts = {"backend": dist.get_backend()}
    distributed.setup = lambda _name="auto": WorldOfOne(0, 1, 0, device)
    wrap = run_loop.RunLoop.wrap

    def spy(self, model):
        wrapped = wrap(self, model)
        facts["wrapped"] = type(wrapped).__name__
        return wrapped

    run_loop.RunLoop.wrap = spy
    if kind == "finetune":
        from brainsegfounder_training.finetuning.recipe import load_recipe
        from brainsegfounder_training.finetuning.trainer import Trainer

        summary = Trainer(
            load_recipe("brats", [f"data.path={data}", *overrides]), RunFolder(out), False, device_type
        ).fit()
    else:
        from brainsegfounder_training.pretraining.loop import Pretrainer
        from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

        recipe = load_pretrain_recipe("stage1-ukb", [f"data.path={data}", *overrides])
        summary = Pretrainer(recipe, RunFolder(out), False, device_type).fit()
    if dist.is_initialized():  # the run leaves the group itself at its end
        dist.destroy_process_group()
    print(json.dumps({**facts, "steps": summary["steps"], "device": summary["device"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
