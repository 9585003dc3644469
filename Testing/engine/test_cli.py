"""The command line as a user and the Slicer module drive it: subcommands, JSON protocol, cancel."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from brainsegfounder.progress import TextReporter

from helpers import ROOT, run_cli, segment_args

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "BrainSegFounderSlicer"), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigterm_cancels_between_windows_and_writes_nothing(tmp_path, brats_model):
    from brainsegfounder.synth.cohort import case_files, write_cohort

    root = write_cohort(tmp_path / "data", kind="brats", n=1, seed=21, spacing=2.0)
    _, images, _ = case_files("brats2021", 0)
    inputs = [(m, root / p) for m, p in images.items()]
    args = segment_args(
        brats_model,
        inputs,
        tmp_path / "out.nii.gz",
        "--overlap",
        "0.9",
        "--sw-batch-size",
        "1",
        "--summary",
        tmp_path / "out.json",
    )
    args[args.index("--progress") + 1] = "json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "brainsegfounder", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if lines[-1].get("stage") == "inference" and lines[-1]["done"] >= 1:
            total = lines[-1]["total"]
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            break
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    lines += [json.loads(line) for line in rest.splitlines()]
    assert time.monotonic() - sent < 30
    assert proc.returncode == 130
    assert lines[-1]["status"] == "cancelled"
    done = [r["done"] for r in lines if r.get("stage") == "inference"]
    assert max(done) < total, "the run should stop well before its last window"
    assert not (tmp_path / "out.nii.gz").exists()
    assert not (tmp_path / "out.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_json_mode_reports_errors_as_a_final_status_line(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    args = segment_args(brats_model, inputs[:2], tmp_path / "out.nii.gz")
    args[args.index("--progress") + 1] = "json"
    code, out, err = run_cli(args, capsys)
    final = json.loads(out.splitlines()[-1])
    assert code == 2
    assert final["status"] == "error"
    assert final["message"].startswith("missing input for t1, t2")
    assert err.strip().startswith("error: missing input")


def test_models_init_inspect_and_list(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BRAINSEGFOUNDER_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "models" / "my-stroke.pt"
    code, _, err = run_cli(
        ["models", "init", "--size", "tiny", "--task", "atlas", "--output", target, "--progress", "none"], capsys
    )
    assert code == 0, err
    code, out, _ = run_cli(["models", "inspect", target], capsys)
    info = json.loads(out)
    assert info["format"] == "brainsegfounder"
    assert info["meta"]["modalities"] == ["t1"]
    assert info["network"]["feature_size"] == 12
    assert info["parameters"] > 4_000_000
    code, out, _ = run_cli(["models", "list"], capsys)
    assert "my-stroke" in out
    assert "brats" in out
    assert "62M" in out
    code, _, err = run_cli(["models", "init", "--size", "9M", "--output", tmp_path / "x.pt"], capsys)
    assert code == 2
    assert "unknown model size '9M'" in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_local_model_names_resolve(tmp_path, capsys, monkeypatch, brats_model, brats_inputs):
    monkeypatch.setenv("BRAINSEGFOUNDER_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "glioma-v1.pt").write_bytes(brats_model.read_bytes())
    inputs, _ = brats_inputs
    code, _, err = run_cli(segment_args("glioma-v1", inputs, tmp_path / "o.nii.gz"), capsys)
    assert code == 0, err
    code, _, err = run_cli(segment_args("glioma-v2", inputs, tmp_path / "p.nii.gz"), capsys)
    assert code == 2
    assert "unknown model 'glioma-v2'" in err
    assert "glioma-v1" in err


def test_synth_command_with_previews(tmp_path, capsys):
    code, _out, err = run_cli(
        [
            "synth",
            "--out",
            tmp_path / "d",
            "--kind",
            "brats",
            "--layout",
            "brats2023",
            "--n",
            "1",
            "--spacing",
            "4",
            "--preview",
            "--progress",
            "none",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "d" / "previews" / "BraTS-GLI-00001-000.png").stat().st_size > 10_000
    code, _, err = run_cli(
        ["synth", "--out", tmp_path / "e", "--kind", "stroke", "--layout", "brats2021", "--progress", "none"], capsys
    )
    assert code == 2
    assert "does not fit kind 'stroke'" in err


@pytest.mark.slow
def test_text_progress_bar_on_stderr(tmp_path, capsys, brats_model, brats_inputs):
    inputs, _ = brats_inputs
    args = segment_args(brats_model, inputs, tmp_path / "o.nii.gz", "--overlap", "0.75", "--sw-batch-size", "1")
    args[args.index("--progress") + 1] = "text"
    code, out, err = run_cli(args, capsys)
    assert code == 0
    # stderr is not a terminal here (a log file): plain lines, no carriage-return bar
    assert "\r" not in err
    assert "inference [" not in err
    assert re.search(r"^inference: \d+/\d+, eta ", err, re.MULTILINE), err
    assert out.startswith("wrote ")
    assert re.search(r"Whole tumor \(WT\)\s+[\d.]+ mL", out), out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_lines_in_a_log():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        report = TextReporter(stream)
        for done in range(21):
            report("inference", done, 20)
    assert "\r   inference [####" in terminal.getvalue()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[-1] == "inference: 20/20"
    assert len(lines) == 11  # the first window, then one per tenth: not one per window


def _register_hello(subparsers, add_common):
    """A plugin's registrar, as the training pipeline's: one subcommand and its handler."""
    add_common(subparsers.add_parser("hello", help="a plugin's command"))
    return {"hello": lambda args, report, cancel: {"message": "hello"}}


def test_plugin_commands_run_and_leave_the_built_in_table_as_it_was(monkeypatch, capsys):
    from brainsegfounder import cli

    before = dict(cli.COMMANDS)
    monkeypatch.setenv(cli.PLUGIN_ENV, f"{__name__}:_register_hello")
    cli.build_parser()
    assert cli.main(["hello", "--progress", "none"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert before == cli.COMMANDS  # building parsers changes no module state


def test_a_command_package_that_cannot_be_imported_costs_its_commands_only(monkeypatch):
    """A stale install or a missing extra must not take segment down with it."""
    from brainsegfounder.cli import build_parser

    monkeypatch.setenv("BRAINSEGFOUNDER_COMMANDS", "no_such_package.commands:register")
    parser = build_parser()
    assert "segment" in parser._subparsers._group_actions[0].choices
    text = " ".join(parser.format_help().split())
    assert "commands not loaded: no_such_package.commands (No module named 'no_such_package')" in text
