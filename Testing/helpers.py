"""Helpers shared by the test suites (fixtures live in conftest.py).

Importable as ``helpers`` from any test module: pytest puts this folder on ``sys.path`` for
Testing/conftest.py (the default "prepend" import mode), and pyproject.toml names it in
``pythonpath`` too.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]

# Tiny training runs shared by the training and GPU tests: the tiny model, 64^3, one step.
FINETUNE_QUICK = [
    "model.size=tiny",
    "model.roi=[64,64,64]",
    "train.epochs=1",
    "train.steps_per_epoch=1",
    "train.warmup_epochs=0",
    "train.batch_size=1",
    "data.folds=2",
    "data.workers=0",
    "data.cache=none",
    "train.val_every=1",
    "validation.overlap=0",
    "model.gradient_checkpointing=false",
]
# Pretraining: 2 volumes x 1 crop per step, so the crops of one step come from different
# subjects and the contrastive task has real negatives.
PRETRAIN_QUICK = [
    "model.size=tiny",
    "model.roi=[64,64,64]",
    "train.batch_size=2",
    "train.crops_per_volume=1",
    "train.warmup_steps=0",
    "data.workers=0",
    "model.gradient_checkpointing=false",
    "train.log_every=1",
]


def wait_until(condition, timeout, what, interval=0.05, on_timeout=None):
    """Call ``condition()`` every ``interval`` s until it returns something true, and return that.
    After ``timeout`` s fail the test with "timed out ... waiting for WHAT", calling
    ``on_timeout()`` first (to end a process the test started, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if on_timeout is not None:
                on_timeout()
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def run_cli(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from brainsegfounder.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree_state(*folders):
    """Every file and folder under ``folders`` (hidden ones too) with its content hash: equal
    before and after a failed run means nothing changed and nothing was left behind."""
    import hashlib

    state = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink() or not path.is_file():
                state[str(path)] = "link" if path.is_symlink() else "folder"
            else:
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float  # the process's peak resident memory


# A child forked from a big process (pytest holds a GiB) starts with its parent's peak memory,
# so a measured command is started by this small launcher and counted as its child.
_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def measured(command, env=None, cwd=None, timeout=300) -> Measured:
    """Run ``command``; its exit code, output, wall time and peak memory."""
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        peak = Path(scratch) / "peak"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(peak), *map(str, command)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.perf_counter() - start
        return Measured(done.returncode, done.stdout, done.stderr, seconds, int(peak.read_text()) / 1024)


def zip_bomb(path, inflated_mib=300):
    """A real checkpoint (a state_dict of zeros) with its members deflated: a few hundred kB that
    torch would inflate to ``inflated_mib`` MiB before it could say anything."""
    import tempfile
    import zipfile

    import torch

    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "plain.pt"
        torch.save({"state_dict": {"w": torch.zeros(inflated_mib * 2**20 // 4)}}, plain)
        with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as bomb:
            for info in source.infolist():
                bomb.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return path


def refused_pretrain(capsys, out, pattern, *args):
    """``brainsegfounder pretrain ARGS --out OUT`` is refused: exit 2, one error line matching ``pattern``,
    and no run folder made."""
    code, _, err = run_cli(["pretrain", *args, "--out", out, "--progress", "none"], capsys)
    one_error_line(code, err, pattern)
    assert not Path(out).exists()


def one_error_line(code, err, pattern):
    """A refused command: exit 2, one ``error:`` line on stderr matching ``pattern``, no traceback."""
    import re

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert "internal error" not in err


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of ``size`` (e.g. "64k") mounted at ``folder``, unmounted at the end; skipped where
    mounting is not allowed (it needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield folder
    finally:
        # a failed assertion's traceback may hold a writer's open file: busy until collected
        gc.collect()
        if subprocess.run(["umount", str(folder)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


def segment_args(model, inputs, output, *extra):
    args = ["segment", "--model", model, "--output", output, "--progress", "none", *extra]
    for name, path in inputs:
        args += ["--input", f"{name}={path}"]
    return args


def save_cases(root, data_root, indices):
    """Save synthetic cases as an annotator would (inputs + corrected label) with the engine."""
    from brainsegfounder.cases import save_case
    from brainsegfounder.synth.cohort import case_files

    for i in indices:
        _, images, label = case_files("brats2021", i)
        save_case(
            root,
            f"patient-{i}",
            {m: sitk.ReadImage(str(data_root / p)) for m, p in images.items()},
            sitk.ReadImage(str(data_root / label)),
            "brats_regions",
            "brats2021",
            source_model={"name": "tiny-brats", "version": "0"},
            author="annotator",
        )
    return root


def write_dicom_series(image: sitk.Image, folder, series_uid="1.2.826.0.1.3680043.2.1125.1.42"):
    """Write a volume as an int16 DICOM series (one file per slice)."""
    folder.mkdir()
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": "\\".join(map(str, direction[0::3] + direction[1::3])),
            "0018|0050": str(image.GetSpacing()[2]),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(slice_)


def monai_swinunetr(in_ch=4, out_ch=3, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), feature=12, seed=0):
    """A network built with MONAI directly, as BrainSegFounder's code builds it."""
    import torch
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    return SwinUNETR(
        in_channels=in_ch,
        out_channels=out_ch,
        depths=depths,
        num_heads=heads,
        feature_size=feature,
        norm_name="instance",
        use_v2=False,
        downsample="merging",
    ).eval()


def ssl_checkpoint(path, in_ch=1):
    """Laid out like BrainSegFounder's SSL release: module.swinViT.* plus the 16 head keys.
    Returns the encoder's state dict."""
    import torch

    encoder = monai_swinunetr(in_ch=in_ch, seed=5).swinViT.state_dict()
    bottleneck = 16 * 12
    state = {f"module.swinViT.{k}": v for k, v in encoder.items()}
    state["module.rotation_head.weight"] = torch.randn(4, bottleneck)
    state["module.rotation_head.bias"] = torch.randn(4)
    state["module.contrastive_head.weight"] = torch.randn(512, bottleneck)
    state["module.contrastive_head.bias"] = torch.randn(512)
    channels = [bottleneck, bottleneck // 2, bottleneck // 4, bottleneck // 8, bottleneck // 16, bottleneck // 16]
    for i, idx in enumerate((0, 4, 8, 12, 16)):
        state[f"module.conv.{idx}.weight"] = torch.randn(channels[i + 1], channels[i], 3, 3, 3)
        state[f"module.conv.{idx}.bias"] = torch.randn(channels[i + 1])
    state["module.conv.20.weight"] = torch.randn(in_ch, channels[-1], 1, 1, 1)
    state["module.conv.20.bias"] = torch.randn(in_ch)
    torch.save({"global_step": 1000, "epoch": 3, "state_dict": state, "optimizer": {}}, path)
    return encoder


def tumour_crop(root, folder, size=64, index=0):
    """The synthetic BraTS case ``index`` of ``root`` cut to ``size`` voxels per side (at most)
    around its tumour and turned to LPS, written to ``folder``: [(modality, path)] and the label
    image. Small enough for one window; the turn makes results find their way back to its grid."""
    import numpy as np

    from brainsegfounder.synth.cohort import case_files

    _, images, label = case_files("brats2021", index)
    truth = sitk.ReadImage(str(root / label))
    centre = np.argwhere(sitk.GetArrayFromImage(truth).transpose(2, 1, 0) > 0).mean(axis=0).astype(int)
    sizes = [min(size, n) for n in truth.GetSize()]
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, sizes, truth.GetSize(), strict=True)]

    def cut(path, name):
        image = sitk.DICOMOrient(sitk.RegionOfInterest(sitk.ReadImage(str(path)), sizes, start), "LPS")
        sitk.WriteImage(image, str(folder / name))
        return str(folder / name)

    inputs = [(m, cut(root / p, f"{m}.nii.gz")) for m, p in images.items()]
    return inputs, sitk.ReadImage(cut(root / label, "seg.nii.gz"))
