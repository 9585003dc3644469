"""``brainsegfounder web``'s options (no browser): what a session's app process is given, how long
a server lives without a tab, and bad values."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from brainsegfounder.cli import build_parser, main
from brainsegfounder_web import commands

from helpers import ROOT


def parsed(*options):
    return build_parser().parse_args(["web", *options])


def test_every_option_of_the_front_reaches_each_sessions_app_with_its_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parsed(
        "--cases", "c", "--models", "m", "--save-to", "s", "--registry", "r.json", "--max-upload-mb", "7",
        "--device", "cuda:1", "--finetune-set", "train.epochs=2", "--finetune-set", "data.cache=none",
        "--sessions", "3", "--host", "0.0.0.0", "--port", "9000",
    )  # fmt: skip
    app = commands._app_args(args)
    pairs = dict(zip(app[::2], app[1::2], strict=True))  # every option has its value
    assert pairs["--cases"] == str(tmp_path / "c")
    assert pairs["--models"] == str(tmp_path / "m")
    assert pairs["--save-to"] == str(tmp_path / "s")
    assert pairs["--registry"] == str(tmp_path / "r.json")
    assert (pairs["--max-upload-mb"], pairs["--device"]) == ("7", "cuda:1")
    assert pairs["--sessions"] == "0"  # a session's app is one scene: it does not start sessions itself
    assert [app[i + 1] for i, a in enumerate(app) if a == "--finetune-set"] == ["train.epochs=2", "data.cache=none"]
    # the front's own address is not the app's: the front gives each app a loopback port
    assert "--host" not in app
    assert "--port" not in app


@pytest.fixture
def signal_handlers():
    """The command sets a server's signal handling: this test process gets its own back."""
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in before.items():
        signal.signal(number, handler)


@pytest.mark.usefixtures("signal_handlers")
def test_a_one_scene_server_does_not_stop_when_its_last_tab_closes(monkeypatch):
    """trame stops a server 300 s after its last client unless told otherwise."""
    pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install '.[web]')")
    # slicer-core imports every module beside it on its path: the Logic tests' helpers first
    monkeypatch.syspath_prepend(str(ROOT / "Testing" / "slicer"))
    from brainsegfounder_web import app as web_app

    started = []

    class Recorder:
        def __init__(self, **_):
            self.server = self

        def start(self, **options):
            started.append(options)

    monkeypatch.setattr(web_app, "BrainSegFounderWebApp", Recorder)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command hands trame a command line of its own
    assert main(["web", "--sessions", "0", "--progress", "none"]) == 0
    assert started[0]["timeout"] == 0  # never
    assert started[0]["host"] == "127.0.0.1"
    assert main(["web", "--sessions", "0", "--idle-exit", "5", "--progress", "none"]) == 0
    assert started[1]["timeout"] == 5  # a session's app, started by the front


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--sessions", "-1"], "--sessions must be 0 or more"),
        (["--session-idle", "0"], "--session-idle 1 or more"),
        (["--cases", "no-such-folder"], "is not a folder"),
    ],
)
def test_bad_values_are_one_line_and_start_nothing(options, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["web", *options, "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert says in err[0]
    assert list(Path(tmp_path).iterdir()) == []
