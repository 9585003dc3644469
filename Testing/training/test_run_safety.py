"""finetune and pretrain: bad arguments and paths are one line before any data or model is read,
a rejected run makes no folder, and a full disk is the user's error that keeps the last good state."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from brainsegfounder.errors import UserError

from helpers import one_error_line, run_cli, small_disk, tree_state
from quick import CPU, ENV, QUICK

NOWHERE = "/nonexistent/brainsegfounder-data"


# -- arguments come first -----------------------------------------------------------------------

BAD_SETTINGS = [
    (["finetune", "--config", "brats", "train.lr=abc"], r"recipe train\.lr must be a number in \(0, inf\), got 'abc'"),
    (["finetune", "--config", "brats", "validation.overlap=1.5"], r"validation\.overlap must be a number in \[0, 1\)"),
    (
        ["finetune", "--config", "brats", "validation.threshold=2"],
        r"validation\.threshold must be a number in \(0, 1\)",
    ),
    (["finetune", "--config", "brats", "data.workers=-1"], r"data\.workers must be a whole number of at least 0"),
    (["finetune", "--config", "brats", "train.amp=maybe"], r"train\.amp must be true or false, got 'maybe'"),
    (["finetune", "--config", "brats", "augment.flip=2"], r"augment\.flip must be a number in \[0, 1\]"),
    (["finetune", "--config", "brats", "train.warmup_epochs=-5"], r"train\.warmup_epochs must be a whole number"),
    (["finetune", "--config", "brats", "--register", "../x"], r"--register '\.\./x' is not usable as a folder name"),
    (["finetune", "--config", "brats", "--device", "gpu"], r"unknown device 'gpu'"),
    (
        ["finetune", "--base", "/nonexistent/model.pt"],
        r"init\.checkpoint \(--base\): /nonexistent/model\.pt does not exist",
    ),
    (["pretrain", "--config", "stage1-ukb", "train.lr=-1"], r"recipe train\.lr must be a number in \(0, inf\)"),
    (["pretrain", "--config", "stage1-ukb", "train.grad_clip=0"], r"train\.grad_clip must be a number in \(0, inf\)"),
    (["pretrain", "--config", "stage1-ukb", "ssl.cross_sample=2"], r"ssl\.cross_sample must be true or false"),
    (
        ["pretrain", "--config", "stage2-brats", "--init", "/nonexistent/s1.pt"],
        r"init\.checkpoint \(--init\): /nonexistent/s1\.pt does not exist",
    ),
]


@pytest.mark.parametrize(("args", "expected"), BAD_SETTINGS, ids=[" ".join(a[1:]) for a, _ in BAD_SETTINGS])
def test_a_bad_setting_is_refused_before_data_model_or_torch(tmp_path, args, expected):
    """The data set given does not exist, so a refusal that names the setting came before the
    data was looked at; the child process never imported torch. Before: train.lr=abc and
    data.workers=-1 were internal errors after the data check and the model build (5-8 s),
    overlap 1.5 one after a whole training epoch (24 s), threshold 2 trained to Dice 0."""
    code = (
        "import sys\nfrom brainsegfounder.cli import main\n"
        "code = main(sys.argv[1:])\nprint('torch imported' if 'torch' in sys.modules else 'no torch')\n"
        "sys.exit(code)\n"
    )
    command, *rest = args
    done = subprocess.run(
        [sys.executable, "-c", code, command, *CPU, "--data", NOWHERE, "--out", tmp_path / "run", *rest],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_error_line(done.returncode, done.stderr, expected)
    assert done.stdout.strip() == "no torch"
    assert list(tmp_path.iterdir()) == []


# -- paths of the run folder --------------------------------------------------------------------


def _pretrain_run(folder: Path) -> Path:
    from brainsegfounder_training.pretraining.recipe import load_pretrain_recipe

    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(load_pretrain_recipe("stage1-ukb")))
    return folder


@pytest.mark.parametrize(
    ("command", "problem", "expected"),
    [
        ("finetune", "out is a file", r"a-file is a file, not a folder; give a new --out folder"),
        ("finetune", "out is a loop", r"loop is a loop of symbolic links; give a new --out folder"),
        ("finetune", "out is a broken link", r"broken is a symbolic link to .*gone, which does not exist"),
        ("finetune", "out is inside a file", r"a-file is a file, not a folder"),
        ("pretrain", "out is a file", r"a-file is a file, not a folder; give a new --out folder"),
        ("finetune", "resume a file", r"a-file is a file, not a folder; give the folder a finetune run wrote"),
        ("finetune", "resume a loop", r"loop is a loop of symbolic links; give the folder a finetune run wrote"),
        ("finetune", "resume nothing", r"nothing does not exist; give the folder a finetune run wrote"),
        ("finetune", "resume a data set", r"is not a run folder \(no recipe\.yaml\)"),
        ("finetune", "resume a pretrain run", r"is not a finetune run \(.*unknown recipe key"),
        ("finetune", "resume a state that is a folder", r"state\.pt is a folder, not a file; this run cannot continue"),
        ("pretrain", "resume a log that is a loop", r"metrics\.jsonl is a loop of symbolic links; this run cannot"),
        ("pretrain", "resume a loop", r"loop is a loop of symbolic links; give the folder a pretrain run wrote"),
    ],
)
def test_a_path_that_is_no_run_folder_is_one_line(tmp_path, capsys, train_root, command, problem, expected):
    """Before: --out a file was an internal error (NotADirectoryError), a loop went on to the
    data check, a resume of a missing folder or a loop said 'no recipe.yaml', and a state.pt
    that is a folder trained a whole epoch before 'cannot write'."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    (tmp_path / "data-set").mkdir()
    _pretrain_run(tmp_path / "pretrain-run")
    _pretrain_run(tmp_path / "looped-run")
    (tmp_path / "looped-run" / "metrics.jsonl").symlink_to("metrics.jsonl")
    finetune_run = tmp_path / "finetune-run"
    finetune_run.mkdir()
    (finetune_run / "recipe.yaml").write_text("task: brats\n")
    (finetune_run / "state.pt").mkdir()
    paths = {
        "out is a file": ["--out", "a-file"],
        "out is a loop": ["--out", "loop"],
        "out is a broken link": ["--out", "broken"],
        "out is inside a file": ["--out", "a-file/run"],
        "resume a file": ["--resume", "a-file"],
        "resume a loop": ["--resume", "loop"],
        "resume nothing": ["--resume", "nothing"],
        "resume a data set": ["--resume", "data-set"],
        "resume a pretrain run": ["--resume", "pretrain-run"],
        "resume a state that is a folder": ["--resume", "finetune-run"],
        "resume a log that is a loop": ["--resume", "looped-run"],
    }[problem]
    flag, name = paths
    if flag == "--resume":
        args = [command, "--resume", tmp_path / name]
    elif command == "finetune":
        args = [command, "--config", "brats", "--data", train_root, "--out", tmp_path / name, *QUICK]
    else:
        args = [command, "--config", "stage1-ukb", "--data", train_root, "--out", tmp_path / name]
    before = tree_state(tmp_path)
    code, _, err = run_cli([*args, *CPU], capsys)
    one_error_line(code, err, expected)
    assert tree_state(tmp_path) == before


def test_a_wrong_replay_path_or_cache_folder_is_said_before_the_data_is_read(tmp_path, capsys, train_root):
    """The main data set has a bad label, which reading it in full would find first: the replay
    path (found, not yet read) and a cache folder that is a file are said before it."""
    import shutil

    import numpy as np
    import SimpleITK as sitk

    data = tmp_path / "data"
    shutil.copytree(train_root, data)
    label = data / "BraTS2021_00004" / "BraTS2021_00004_seg.nii.gz"
    image = sitk.ReadImage(str(label))
    bad = sitk.GetImageFromArray(np.where(sitk.GetArrayFromImage(image) == 2, 7, 0).astype(np.uint8))
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(label))
    (tmp_path / "a-file").write_text("x")
    replay = ["--replay", tmp_path / "no-replay", "--out", tmp_path / "run"]
    code, _, err = run_cli(["finetune", "--config", "brats", "--data", data, *replay, *CPU, *QUICK], capsys)
    one_error_line(code, err, r"data.replay: .*no-replay does not exist")
    cache = ["data.cache=disk", f"data.cache_dir={tmp_path / 'a-file'}", "--out", tmp_path / "run"]
    code, _, err = run_cli(["pretrain", "--config", "stage1-ukb", "--data", data, *cache, *CPU], capsys)
    one_error_line(code, err, r"data\.cache_dir: .*a-file is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "data"]


def test_a_run_whose_own_files_were_damaged_since_is_one_line(tmp_path, capsys, train_root):
    """The run writes splits.json whole; a file damaged by something else is named, not an
    internal JSONDecodeError."""
    from brainsegfounder_training.harness.recipe import dump

    from quick import quick_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(dump(quick_recipe(train_root)))
    (run / "splits.json").write_text('{"train": ["BraTS2021_0')
    code, _, err = run_cli(["finetune", "--resume", run, *CPU], capsys)
    one_error_line(code, err, r"run/splits\.json is damaged \(JSONDecodeError: .*\); this run cannot continue")


# -- writing the run's files --------------------------------------------------------------------


def test_a_state_that_does_not_fit_keeps_the_last_one(tmp_path):
    """torch.save on a really full disk raises RuntimeError ("unexpected pos ..."), not OSError:
    still the disk is full, one line, and the previous state.pt is whole."""
    from brainsegfounder_training.harness.state import load_state, save_state

    with small_disk(tmp_path / "disk", "64k") as disk:
        save_state({"format": "test", "step": 1}, disk / "state.pt", "")
        with pytest.raises(UserError, match=r"state\.pt \(the disk is full\); the last step is kept\. Free space and"):
            save_state(
                {"format": "test", "step": 2, "w": torch.zeros(100_000)}, disk / "state.pt", "the last step is kept."
            )
        assert load_state(disk / "state.pt", "test", "test")["step"] == 1
        assert sorted(p.name for p in disk.iterdir()) == ["state.pt"]  # no temporary left


def test_a_metrics_line_on_a_full_disk_is_one_line():
    """/dev/full: every write is ENOSPC. Before: an OSError out of the loop, an internal error."""
    from brainsegfounder_training.harness.writes import append_text

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(UserError, match=r"cannot write /dev/full \(the disk is full\); kept\. Free space and go on"):
        append_text("/dev/full", '{"step": 1}\n', "kept.", "go on")


def test_the_first_files_are_all_written_or_none_and_no_folder(tmp_path, monkeypatch):
    from brainsegfounder import atomic
    from brainsegfounder_training.harness.run_folder import RunFolder

    real = atomic.fsync_file

    def full(path):
        if Path(path).name == "splits.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(atomic, "fsync_file", full)
    run = RunFolder(tmp_path / "runs" / "first")
    with pytest.raises(
        UserError, match=r"splits\.json \(the disk is full\); nothing was kept\. Free space and run again"
    ):
        run.write_first({"recipe.yaml": "a: 1\n", "splits.json": "{}\n"})
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_start_drops_the_records_of_an_attempt_killed_before_its_first_state(tmp_path):
    from brainsegfounder_training.harness.metrics_log import MetricsLog
    from brainsegfounder_training.harness.run_folder import RunFolder

    run = RunFolder(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"type": "step", "epoch": 1, "step": 1}\n{"type": "st')
    log = MetricsLog(run, True, None)
    log.write({"type": "step", "epoch": 1, "step": 1, "loss": 0.5})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        json.dumps({"type": "step", "epoch": 1, "step": 1, "loss": 0.5})
    ]
    (tmp_path / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 1}\n{"type": "epoch", "epoch": 2}\n{"ty')
    MetricsLog(run, True, 1).close()  # resuming after epoch 1: epoch 2 and the cut line go
    assert (tmp_path / "metrics.jsonl").read_text() == '{"type": "epoch", "epoch": 1}\n'


@pytest.mark.slow
def test_a_run_on_a_really_full_disk_stops_with_one_line_and_resumes(tmp_path, capsys, train_root):
    """A 150 MB tmpfs with 60 MB taken: epoch 1's state.pt (57 MB) fits, epoch 2's best.pt
    (24 MB) fits, its state.pt does not. One line, epoch 1's state kept, no temporary left;
    with the 60 MB freed the same run resumes and finishes."""
    with small_disk(tmp_path / "disk", "150m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 60 * 2**20)
        run = disk / "run"
        args = ["finetune", "--config", "brats", "--data", train_root, "--out", run, *CPU, *QUICK]
        code, _, err = run_cli([*args, "train.epochs=2", "train.val_every=10"], capsys)
        one_error_line(
            code,
            err,
            r"state\.pt \(the disk is full\); the last finished epoch is kept in state\.pt\. "
            r"Free space and continue with --resume",
        )
        state = torch.load(run / "state.pt", weights_only=True)
        assert state["epoch"] == 1
        assert not (run / ".brainsegfounder").exists()
        filler.unlink()
        code, out, err = run_cli(["finetune", "--resume", run, *CPU], capsys)
        assert code == 0, err
        assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 2
        assert "best held-out Dice (epoch 2)" in out


KILLED_WHILE_WRITING = """
import sys, time
from pathlib import Path
import torch
real = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("format") == "brainsegfounder-train-state" and obj["epoch"] == 2:
        Path(f).write_bytes(b"the first megabyte of a state")
        Path(sys.argv[1]).write_text(str(f))
        time.sleep(600)  # killed here, half-way through the write
    return real(obj, f, *args, **kwargs)
torch.save = save
from brainsegfounder.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_run_killed_while_writing_its_state_keeps_the_last_one_and_resumes(tmp_path, train_root):
    """SIGKILL in the middle of writing epoch 2's state: epoch 1's state.pt is whole, the half
    temporary lies in the staging area only, and the resumed run finishes and removes it."""
    from helpers import wait_until

    run, marker = tmp_path / "run", tmp_path / "writing"
    args = ["finetune", "--config", "brats", "--data", train_root, "--out", run, *CPU, *QUICK]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_WRITING, marker, *args, "train.epochs=3", "train.val_every=10"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: marker.exists() or child.poll() is not None, 300, "epoch 2's state.pt being written")
    child.kill()
    child.wait()
    assert marker.exists(), "the run ended before it wrote epoch 2's state"
    half = Path(marker.read_text())
    assert half.parent.parent == run / ".brainsegfounder"  # never in the run folder itself
    assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 1

    resumed = subprocess.run(
        [sys.executable, "-m", "brainsegfounder", "finetune", "--resume", run, *CPU],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / "state.pt", weights_only=True)["epoch"] == 3
    assert not (run / ".brainsegfounder").exists()  # the killed run's temporary is gone
