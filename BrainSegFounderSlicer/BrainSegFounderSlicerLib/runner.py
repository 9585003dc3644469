"""Run the engine's command in a background process and follow its JSON-lines progress.

The process gets its own process group (its own job on Windows), so Cancel ends it and
everything it started. Cancel first asks politely (SIGTERM: the engine stops at the next
window or step and writes nothing), then kills the group after a grace period. Nothing here
blocks: a GUI timer calls :meth:`BackgroundProcess.poll`, tests call :meth:`wait`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

MODULE_DIR = Path(__file__).resolve().parents[1]  # BrainSegFounderSlicer/: the engine lives here
TRAINING_COMMANDS = "brainsegfounder_training.commands:register"
_IS_WINDOWS = os.name == "nt"


def python_executable() -> str:
    """Slicer's own Python (PythonSlicer) inside Slicer, else this interpreter."""
    if Path(sys.executable).stem.lower().startswith("python"):
        return sys.executable
    return shutil.which("PythonSlicer") or sys.executable


def engine_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment in which ``python -m brainsegfounder`` finds the engine and the training
    pipeline whether they are pip-installed, in an installed extension or in a source tree."""
    env = dict(os.environ if base is None else base)
    paths = [str(MODULE_DIR)]
    training = MODULE_DIR.parent / "Training"
    if (training / "brainsegfounder_training").is_dir():
        paths.append(str(training))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["BRAINSEGFOUNDER_COMMANDS"] = TRAINING_COMMANDS
    env["PYTHONUNBUFFERED"] = "1"
    return env


def engine_command(*args: str) -> List[str]:
    """``python -m brainsegfounder ARGS --progress json``."""
    return [python_executable(), "-m", "brainsegfounder", *map(str, args), "--progress", "json"]


class BackgroundProcess:
    """One engine command; its JSON progress lines arrive as events through :meth:`poll`."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[os.PathLike] = None,
        grace_s: float = 10.0,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.env = engine_environment() if env is None else env
        self.cwd = cwd
        self.grace_s = grace_s
        self.process: Optional[subprocess.Popen] = None
        self.final: Optional[dict] = None  # the engine's last line: {"status": ..., "message": ...}
        self.stderr_lines: List[str] = []
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._kill_at: Optional[float] = None
        self._readers: List[threading.Thread] = []

    # -- starting and following ------------------------------------------------------------
    def start(self) -> "BackgroundProcess":
        options = {}
        if _IS_WINDOWS:
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True  # own process group: killpg reaches its children
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"log": line}
            if not isinstance(event, dict):
                event = {"log": line}
            if "status" in event:
                self.final = event
            self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            del self.stderr_lines[:-400]  # the tail is what a details button needs

    def poll(self) -> List[dict]:
        """New events since the last call; escalates a cancel past its grace period."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        if self._kill_at is not None and self.running and time.monotonic() >= self._kill_at:
            self._signal_group(kill=True)
        if self.finished:
            self._reap_group()
        return events

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def finished(self) -> bool:
        """The process has exited and everything it wrote has been read."""
        return (
            self.process is not None
            and self.process.poll() is not None
            and not any(r.is_alive() for r in self._readers)
        )

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    @property
    def status(self) -> Optional[str]:
        """ok / error / cancelled once finished (a crash without a final line is an error)."""
        if not self.finished:
            return None
        if self.final is not None:
            return self.final.get("status")
        if self._kill_at is not None:
            return "cancelled"
        return "ok" if self.returncode == 0 else "error"

    def error_line(self) -> str:
        """The engine's one line for people, or the best we can say without it."""
        if self.final and self.final.get("message"):
            return self.final["message"]
        for line in reversed(self.stderr_lines):
            if line.startswith("error:"):
                return line[len("error:") :].strip()
        return f"the engine stopped with exit code {self.returncode}; see the details"

    def details(self) -> str:
        return "\n".join(["command: " + " ".join(self.argv), f"exit code: {self.returncode}", "", *self.stderr_lines])

    def wait(self, timeout: Optional[float] = None, on_event=None) -> Optional[str]:
        """Poll until finished (for scripts and tests); returns the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for event in self.poll():
                if on_event:
                    on_event(event)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[:4]} still running after {timeout} s")
            time.sleep(0.05)
        for event in self.poll():
            if on_event:
                on_event(event)
        return self.status

    # -- stopping ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the process tree to stop now; it is killed if still there after ``grace_s``."""
        if self.process is None or self._kill_at is not None:
            return
        self._kill_at = time.monotonic() + self.grace_s
        self._signal_group(kill=_IS_WINDOWS)  # Windows has no SIGTERM for a tree: end it at once

    def _signal_group(self, kill: bool) -> None:
        if _IS_WINDOWS:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(self.process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def _reap_group(self) -> None:
        """Children the engine left behind (data loader workers) go with it."""
        if self.process is not None and not _IS_WINDOWS:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
