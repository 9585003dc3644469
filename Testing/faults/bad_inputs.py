"""The table of bad inputs and faults every entry point is run against (Testing/faults/ and
Testing/benchmarks/bad_input_cost.py): the bad files, the rows, and a runner that measures each
run's time and peak memory."""

from __future__ import annotations

import gzip
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from helpers import ROOT, Measured, measured, write_dicom_series, zip_bomb

SEGMENT = (
    "segment --model {model} --input flair={flair} --input t1ce={t1ce} --input t1={t1} --input t2={t2} "
    "--output out/labels.nii.gz --seg-nrrd out/labels.seg.nrrd --summary out/summary.json --preview out/preview.png"
)
CASE = "data/BraTS2021_00001/BraTS2021_00001"
GOOD = {
    "model": "model.pt",
    "flair": f"{CASE}_flair.nii.gz",
    "t1ce": f"{CASE}_t1ce.nii.gz",
    "t1": f"{CASE}_t1.nii.gz",
    "t2": f"{CASE}_t2.nii.gz",
    "data": "data",
    "pred": "pred",
    "checkpoint": "model.pt",
    "out": "out",
}


def _nifti_header_only(path: Path, shape) -> None:
    """A NIfTI header that claims ``shape`` float32 voxels, and no voxels."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    path.write_bytes(header.binaryblock + b"\0" * 32)


def make_bad_files(world: Path) -> None:
    bad = world / "bad"
    bad.mkdir()
    flair = world / GOOD["flair"]
    rng = random.Random(0)
    (bad / "random.nii.gz").write_bytes(rng.randbytes(4096))
    (bad / "random.pt").write_bytes(rng.randbytes(4096))
    (bad / "empty.nii.gz").write_bytes(b"")
    (bad / "empty.pt").write_bytes(b"")
    data = gzip.decompress(flair.read_bytes())
    (bad / "truncated.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    mha = bad / "whole.mha"
    sitk.WriteImage(sitk.ReadImage(str(flair)), str(mha))
    (bad / "truncated.mha").write_bytes(mha.read_bytes()[: mha.stat().st_size // 2])
    mha.unlink()
    _nifti_header_only(bad / "huge.nii", (1000, 1000, 1000))
    model = (world / GOOD["model"]).read_bytes()
    (bad / "truncated.pt").write_bytes(model[: len(model) // 2])
    zip_bomb(bad / "bomb.pt")
    (bad / "loop.nii.gz").symlink_to("loop.nii.gz")
    (bad / "loop").symlink_to("loop")
    (bad / "folder.nii.gz").mkdir()
    (bad / "folder.pt").mkdir()
    (bad / "notafolder").write_text("a file, not a folder\n")
    (bad / "emptyfolder").mkdir()
    shutil.copy(flair, bad / "locked.nii.gz")
    shutil.copy(world / GOOD["model"], bad / "locked.pt")
    for locked in ("locked.nii.gz", "locked.pt"):
        (bad / locked).chmod(0)
    shutil.copytree(world / "data", bad / "lockedfolder")
    (bad / "lockedfolder").chmod(0)
    (world / "readonly").mkdir()
    (world / "readonly").chmod(0o555)
    series = bad / "gap_dicom"
    write_dicom_series(sitk.ReadImage(str(flair)), series)
    (series / "slice0010.dcm").unlink()  # one slice lost in the copy
    # predictions with values no label schema has
    (world / "badpred").mkdir()
    for case in ("BraTS2021_00001", "BraTS2021_00002"):
        truth = sitk.ReadImage(str(world / "data" / case / f"{case}_seg.nii.gz"))
        wrong = sitk.GetArrayFromImage(truth)
        wrong[wrong == 4] = 255
        image = sitk.GetImageFromArray(wrong)
        image.CopyInformation(truth)
        sitk.WriteImage(image, str(world / "badpred" / f"{case}.nii.gz"))


@dataclass(frozen=True)
class Row:
    entry: str  # the command as a user types it, with {slot} for the bad value
    fault: str
    slot: str
    value: str
    pattern: str
    unprivileged: bool = False  # files and folders keep their modes (root ignores them otherwise)

    @property
    def id(self) -> str:
        return f"{self.entry.split(' --')[0].split(' {')[0]}: {self.fault}"

    def argv(self) -> list:
        values = {**GOOD, self.slot: self.value}
        return self.entry.format(**values).split()


IMAGE_FAULTS = [
    ("missing file", "bad/missing.nii.gz", r"does not exist"),
    ("random bytes", "bad/random.nii.gz", r"cannot read"),
    ("empty file", "bad/empty.nii.gz", r"cannot read|empty"),
    ("truncated NIfTI", "bad/truncated.nii.gz", r"truncated"),
    ("truncated MHA", "bad/truncated.mha", r"truncated|damaged|cannot read"),
    ("header claims 1000^3 voxels", "bad/huge.nii", r"voxels|truncated"),
    ("symlink loop", "bad/loop.nii.gz", r"symbolic links|symlink|loop"),
    ("a folder given as a file", "bad/folder.nii.gz", r"DICOM|folder"),
    ("DICOM series with a missing slice", "bad/gap_dicom", r"missing|gap|spacing"),
]
CHECKPOINT_FAULTS = [
    ("missing checkpoint", "bad/missing.pt", r"does not exist"),
    ("random bytes as checkpoint", "bad/random.pt", r"not a PyTorch checkpoint"),
    ("empty checkpoint", "bad/empty.pt", r"not a PyTorch checkpoint|empty"),
    ("truncated checkpoint", "bad/truncated.pt", r"truncated|not a PyTorch checkpoint"),
    ("zip bomb as checkpoint", "bad/bomb.pt", r"not a PyTorch checkpoint|damaged|truncated"),
    ("symlink loop as checkpoint", "bad/loop.nii.gz", r"symbolic links|symlink|loop|does not exist"),
    ("a folder given as checkpoint", "bad/folder.pt", r"folder|does not exist"),
]
FOLDER_FAULTS = [
    ("missing folder", "bad/missing", r"does not exist|no such"),
    ("a file given as a folder", "bad/notafolder", r"not a folder|is a file|datalist|cannot read"),
    ("symlink loop as folder", "bad/loop", r"symbolic links|symlink|loop|does not exist"),
    ("empty folder", "bad/emptyfolder", r"no .*cases|no labelled|no predicted|empty|found no"),
]
EVALUATE = "evaluate --data {data} --pred {pred} --out eval"
FINETUNE = "finetune --config demo --data {data} --out runs --epochs 1 --device cpu"
PRETRAIN = "pretrain --config stage1-ukb --data {data} --out runs --steps 1 --device cpu"

GOOD_SEGMENT = Row(SEGMENT, "none (the command that works)", "model", "model.pt", "")
ROWS = [
    *[Row(SEGMENT, f"input image: {f}", "flair", v, p) for f, v, p in IMAGE_FAULTS],
    *[Row(SEGMENT, f"model: {f}", "model", v, p) for f, v, p in CHECKPOINT_FAULTS],
    Row(SEGMENT, "output is the input (same file)", "flair", "out/labels.nii.gz", r"is the input flair"),
    Row(SEGMENT.replace("out/labels.nii.gz", "{out}"), "output is a symlink loop", "out", "bad/loop.nii.gz", r"loop"),
    Row(SEGMENT.replace("out/labels.nii.gz", "{out}"), "output is a folder", "out", "bad/folder.nii.gz", r"folder"),
    Row(SEGMENT, "input without read permission", "flair", "bad/locked.nii.gz", r"[Pp]ermission", unprivileged=True),
    Row(SEGMENT, "model without read permission", "model", "bad/locked.pt", r"[Pp]ermission", unprivileged=True),
    Row(
        SEGMENT.replace("out/", "{out}/"),
        "output folder without write permission",
        "out",
        "readonly",
        r"cannot write",
        unprivileged=True,
    ),
    *[Row("models inspect {checkpoint}", f, "checkpoint", v, p) for f, v, p in CHECKPOINT_FAULTS],
    *[Row("models register {checkpoint} --name m", f, "checkpoint", v, p) for f, v, p in CHECKPOINT_FAULTS[1:3]],
    Row("models register {checkpoint} --name CON", "a name Windows reserves", "checkpoint", "model.pt", r"CON"),
    Row("models init --output {checkpoint}", "an existing file not written by us", "checkpoint", "mine.pt", r"exists"),
    Row("models init --output {checkpoint}", "a file given as a folder", "checkpoint", "bad/notafolder/m.pt", r"file"),
    *[Row(EVALUATE, f"ground truth: {f}", "data", v, p) for f, v, p in FOLDER_FAULTS],
    *[Row(EVALUATE, f"predictions: {f}", "pred", v, p) for f, v, p in FOLDER_FAULTS],
    Row(EVALUATE, "predictions with values outside the schema", "pred", "badpred", r"255"),
    Row(EVALUATE, "ground truth without read permission", "data", "bad/lockedfolder", r"[Pp]ermission", True),
    Row(FINETUNE, "data without read permission", "data", "bad/lockedfolder", r"[Pp]ermission", True),
    *[Row(FINETUNE, f"data: {f}", "data", v, p) for f, v, p in FOLDER_FAULTS],
    *[Row(PRETRAIN, f"data: {f}", "data", v, p) for f, v, p in FOLDER_FAULTS],
    Row("demo --out {data}", "a file given as the output folder", "data", "bad/notafolder", r"file|folder"),
    Row("synth --out {data} --n 1", "a file given as the output folder", "data", "bad/notafolder", r"file|folder"),
]


def build_world(world: Path, data_root: Path, model: Path) -> Path:
    """The folder every row starts from: a data set, a model, earlier results, bad files."""
    shutil.copytree(data_root, world / "data")
    shutil.copy(model, world / "model.pt")
    (world / "mine.pt").write_bytes(b"a file the user made\n")
    (world / "pred").mkdir()
    for case in ("BraTS2021_00001", "BraTS2021_00002"):
        shutil.copy(world / "data" / case / f"{case}_seg.nii.gz", world / "pred" / f"{case}.nii.gz")
    result = run(world, GOOD_SEGMENT.argv())
    if result.returncode:
        raise RuntimeError(f"the good command fails in the template: {result.stderr}")
    make_bad_files(world)
    return world


def command_of(world: Path, argv, unprivileged: bool = False):
    """The command line and environment of one run in ``world``."""
    env = {
        **os.environ,
        "BRAINSEGFOUNDER_HOME": str(world / "home"),
        "BRAINSEGFOUNDER_COMMANDS": "brainsegfounder_training.commands:register",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "BrainSegFounderSlicer"), str(ROOT / "Training")]),
        "MPLCONFIGDIR": str(world.parent / "mpl"),
        "HOME": str(world.parent),
    }
    command = [sys.executable, "-m", "brainsegfounder", *map(str, argv)]
    if "--progress" not in argv:
        command += ["--progress", "none"]
    if unprivileged:  # root that obeys file modes, as any user does
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    return command, env


def run(world: Path, argv, unprivileged: bool = False, timeout: float = 300) -> Measured:
    command, env = command_of(world, argv, unprivileged)
    return measured(command, env, world, timeout)


def fresh_world(template: Path, tmp_path: Path) -> Path:
    world = tmp_path / "w"
    shutil.copytree(template, world, symlinks=True)
    return world
