"""The jobs that get a computer ready: install packages, download or import a model, list devices.

Each is a :class:`.jobs.Job` (start, poll, cancel, progress, result, message, error, details);
the Logic starts them (``logic.start_install(...)``, ...). Results: install -> an
:class:`Installed`; download and import -> the model's key for the model list
(``registry:<id>`` or ``local:<name>``); devices -> ``[(label, device), ...]`` for a selector.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from brainsegfounder.errors import Cancelled, UserError

from . import dependencies
from .jobs import ProcessJob, Progress, ThreadJob
from .models import ModelManager, import_command
from .runner import BackgroundProcess, engine_command, python_executable


@dataclass(frozen=True)
class Installed:
    requirements: Tuple[str, ...]  # what was asked for
    restart_required: bool  # a changed package was already loaded: restart the application


class InstallJob(ProcessJob):
    """pip in a background process under a constraints file that pins the packages the host
    ships; torch first through ``torch_installer`` (Slicer: PyTorch Utils, which picks the CUDA
    build) when one is given and it succeeds, else with pip like the rest."""

    kind = "install"

    def __init__(
        self,
        plan: dependencies.InstallPlan,
        torch_installer: Optional[Callable[[str], bool]] = None,
        python: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.torch_installer = torch_installer
        self.python = python or python_executable()
        self.requirements: List[str] = []
        self._folder: Optional[Path] = None

    def _start(self) -> None:
        torch = self.plan.torch
        through_extension = torch and self.plan.pytorch_utils and self.torch_installer is not None
        if through_extension and self.torch_installer(dependencies.pytorch_utils_requirement(torch)):
            torch = None  # PyTorch Utils installed it; else pip does, like the rest
        self.requirements = ([torch] if torch else []) + list(self.plan.pip)
        if not self.requirements:
            return  # nothing left for pip: over at the first poll
        self._folder = Path(tempfile.mkdtemp(prefix="brainsegfounder-pip-"))
        constraints = self._folder / "constraints.txt"
        constraints.write_text(self.plan.constraints_text())
        command = dependencies.pip_command(self.python, self.requirements, constraints)
        self.process = BackgroundProcess(command, env=dict(os.environ)).start()
        self.progress = Progress("install", message="Installing " + ", ".join(self.requirements))

    def _error_line(self) -> str:
        for line in reversed(self.process.stderr_lines):
            if line.startswith("ERROR:"):
                return "installing packages failed: " + line[len("ERROR:") :].strip()
        return f"installing packages failed (pip exit code {self.process.returncode}); see the details"

    def _succeeded(self) -> Installed:
        return Installed(tuple(self.requirements), self.plan.restart_required)

    def _done_message(self) -> str:
        restart = " Restart the application to use them." if self.plan.restart_required else ""
        return "Packages installed." + restart

    def _cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


class DownloadJob(ThreadJob):
    """A registry model into the download cache, resumable, kept only if its SHA-256 matches."""

    kind = "download"

    def __init__(self, models: ModelManager, entry_id: str) -> None:
        super().__init__(unit="bytes")
        self.models, self.entry_id = models, entry_id

    def work(self, report, cancel) -> Path:
        return self.models.download(self.entry_id, progress=report, cancel=cancel)

    def _succeeded(self) -> str:
        return f"registry:{self.entry_id}"

    def _done_message(self) -> str:
        return f"Downloaded {self.models.entry(self.entry_id).name}; SHA-256 verified."

    def _cancelled_message(self) -> str:
        return "Download paused; start it again to resume."


class ImportJob(ThreadJob):
    """A model file brought by hand: a registry model is recognised by its SHA-256 and stored as
    that model; any other checkpoint is loaded by the engine (in its own process, weights only)
    before it becomes a local model."""

    kind = "import"

    def __init__(self, models: ModelManager, source: os.PathLike, name: Optional[str] = None) -> None:
        super().__init__()
        self.models, self.source = models, Path(source)
        self.name = name or self.source.name.split(".")[0]
        self.process: Optional[BackgroundProcess] = None
        self._message = ""

    def work(self, report, cancel) -> str:
        report("import", 0, 1, f"checking {self.source.name}")
        entry = self.models.import_known(self.source)
        if entry is not None:
            self._message = f"Imported {entry.name} (SHA-256 verified)."
            return f"registry:{entry.id}"
        self.process = BackgroundProcess(import_command(self.source, self.name)).start()
        while not self.process.finished:
            if cancel.cancelled:
                self.process.cancel()
            self.process.poll()
            time.sleep(0.05)
        self.process.poll()
        if self.process.status == "cancelled" or cancel.cancelled:
            raise Cancelled("import cancelled")
        if self.process.status != "ok":
            raise UserError(self.process.error_line())
        final = self.process.final or {}
        self._message = final.get("message", f"Imported {self.name}.")
        return f"local:{final.get('name', self.name)}"

    def details(self) -> str:
        return (self.process.details() if self.process is not None else "") + self._extra_details

    def _done_message(self) -> str:
        return self._message


class DevicesJob(ProcessJob):
    """The engine's ``devices`` command (it imports torch, so it runs in its own process)."""

    kind = "devices"

    def __init__(self) -> None:
        super().__init__(BackgroundProcess(engine_command("devices")))

    def _succeeded(self) -> List[Tuple[str, str]]:
        return device_choices((self.process.final or {}).get("devices", []))

    def _done_message(self) -> str:
        return ""


def device_choices(devices: Sequence[dict]) -> List[Tuple[str, str]]:
    """(label, device) for a device selector: auto, CPU, then each GPU with its name and memory."""
    choices = [("auto", "auto"), ("CPU", "cpu")]
    for device in devices:
        if device.get("id") and device["id"] != "cpu":
            memory = f", {device['memory_gib']} GiB" if device.get("memory_gib") else ""
            choices.append((f"{device['id']}: {device.get('name', '')}{memory}", device["id"]))
    return choices
