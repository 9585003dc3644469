"""How far the installed MONAI moves a BrainSegFounder-format checkpoint, and how far ours does.

Writes a fine-tuned-format file ({epoch, best_acc, state_dict}, plain SwinUNETR keys) of the
given size with MONAI itself (weights random, layer norms and merging layers moved off their
initial values as training leaves them), then runs one window through

* SwinUNETR v1 as MONAI 0.9-1.4 computed it (Testing/engine/swin_reference.py): the reference;
* the installed MONAI's SwinUNETR with the file loaded strictly (MONAI >= 1.5's merge order);
* the engine's network from the file (its merge order read as MONAI 0.9's), and its lean
  inference forward with flash attention;

and prints each one's largest logit difference from the reference and the share of
thresholded voxels (sigmoid > 0.5) that differ.

    .venv/bin/python Testing/benchmarks/merge_order_effect.py [--size 62M] [--side 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from brainsegfounder.checkpoints import load_checkpoint, network_from_checkpoint
from brainsegfounder.low_memory_swin import LowMemorySwinUNETR
from brainsegfounder.networks import SIZES

from swin_reference import MONAI_0_9_ORDER, swinunetr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="62M", choices=[s for s in SIZES if s != "277M"])
    parser.add_argument("--side", type=int, default=128, help="window side (a multiple of 32, at least 64)")
    args = parser.parse_args()
    from monai import __version__ as monai_version
    from monai.networks.nets import SwinUNETR

    size = SIZES[args.size]
    torch.manual_seed(1)
    monai_net = SwinUNETR(
        in_channels=4,
        out_channels=3,
        depths=size["depths"],
        num_heads=size["num_heads"],
        feature_size=size["feature_size"],
        norm_name="instance",
        use_v2=False,
        downsample="merging",
    ).eval()
    with torch.no_grad():
        for name, p in monai_net.named_parameters():
            if "norm" in name or "downsample" in name:
                p.add_(0.2 * torch.randn_like(p))
    torch.manual_seed(0)
    x = torch.randn(1, 4, args.side, args.side, args.side)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "model_final.pt"
        torch.save({"epoch": 300, "best_acc": 0.91, "state_dict": monai_net.state_dict()}, path)
        ckpt = load_checkpoint(path)
        started = time.perf_counter()
        reference = swinunetr(x, monai_net.state_dict(), size["num_heads"], MONAI_0_9_ORDER)
        rows = [("reference: SwinUNETR v1 as MONAI 0.9-1.4", reference, time.perf_counter() - started)]
        for label, run in (
            (f"installed MONAI {monai_version}, file loaded strictly", lambda: monai_net(x)),
            (f"engine ({ckpt.network.merge_order} order)", lambda: network_from_checkpoint(ckpt).eval()(x)),
            (
                "engine, lean forward + flash attention",
                lambda: LowMemorySwinUNETR(network_from_checkpoint(ckpt, use_flash_attention=True))(x),
            ),
        ):
            started = time.perf_counter()
            out = run()
            rows.append((label, out, time.perf_counter() - started))
    print(f"{args.size} BrainSegFounder-format checkpoint, one {args.side}^3 window, 4 channels in, 3 out")
    print(f"{'network':52s} {'max |dlogit|':>12s} {'voxels flipped':>14s} {'s':>6s}")
    for label, out, seconds in rows:
        moved = float((out - reference).abs().max())
        flipped = float(((out > 0) != (reference > 0)).float().mean()) * 100
        print(f"{label:52s} {moved:12.3g} {flipped:13.3f}% {seconds:6.1f}")


if __name__ == "__main__":
    main()
