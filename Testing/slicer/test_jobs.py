"""Every background job behind one interface (start, poll, cancel, progress, result, error,
details), driven as a front end drives it: through the Logic, polled, followed by signals."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import textwrap
import zipfile

import pytest

slicer = pytest.importorskip("slicer")  # before scenes: slicer-core imports its own modules first

from test_model_manager import RangeHandler, registry_with, server  # noqa: E402, F401  (server: a fixture)

from brainsegfounder.errors import UserError  # noqa: E402
from BrainSegFounderSlicerLib import dependencies  # noqa: E402
from BrainSegFounderSlicerLib.jobs import Jobs, ProcessJob, Progress, Signal, ThreadJob  # noqa: E402
from BrainSegFounderSlicerLib.logic import WorkflowLogic  # noqa: E402
from BrainSegFounderSlicerLib.models import ModelManager  # noqa: E402
from BrainSegFounderSlicerLib.runner import BackgroundProcess  # noqa: E402
from BrainSegFounderSlicerLib.setup_jobs import InstallJob, device_choices  # noqa: E402

from helpers import wait_until  # noqa: E402
from scenes import DEMO, new_scene  # noqa: E402


class Recorder:
    """What a front end sees: the signals of a job board, in order."""

    def __init__(self, jobs: Jobs) -> None:
        self.events = []
        jobs.started.connect(lambda job: self.events.append(("started", job.kind)))
        jobs.progress_changed.connect(lambda job: self.events.append(("progress", job.progress)))
        jobs.finished.connect(lambda job: self.events.append(("finished", job.status)))

    @property
    def progress(self):
        return [p for kind, p in self.events if kind == "progress"]


def standin(script: str) -> BackgroundProcess:
    """A process that speaks the engine's progress protocol."""
    return BackgroundProcess([sys.executable, "-c", textwrap.dedent(script)], env=None, grace_s=0.5)


class Counting(ProcessJob):
    kind = "count"

    def _succeeded(self):
        return self.process.final["value"]


PROTOCOL = """
    import json, sys, time
    for i in range(3):
        print(json.dumps({"stage": "count", "done": i + 1, "total": 3, "eta_s": 3 - i}), flush=True)
    print(json.dumps({"status": "ok", "value": 42, "message": "counted"}), flush=True)
"""


def test_a_process_job_reports_progress_then_its_result_through_signals():
    jobs = Jobs()
    seen = Recorder(jobs)
    job = jobs.run(Counting(standin(PROTOCOL)))
    assert jobs.busy("count") is job
    while job.running:
        jobs.poll()
    assert (job.status, job.result, job.error, job.message) == ("ok", 42, None, "Done.")
    assert seen.events[0] == ("started", "count")
    assert seen.events[-1] == ("finished", "ok")
    assert seen.progress[-1] == Progress("count", 3, 3, 1)
    assert seen.progress[-1].text() == "count 3/3, about 1 s left"
    assert jobs.busy("count") is None  # the slot is free again


def test_progress_written_just_before_the_process_ended_is_not_lost():
    """The first poll comes after the process has ended (a busy machine): its progress still shows."""
    jobs = Jobs()
    seen = Recorder(jobs)
    job = jobs.run(Counting(standin(PROTOCOL)))
    wait_until(lambda: job.process.finished, 60, "the process to end", 0.05)
    read = job.process.poll
    calls = []

    def late_lines():  # the first read finds nothing yet: the lines arrive as the process ends
        calls.append(1)
        return [] if len(calls) == 1 else read()

    job.process.poll = late_lines
    assert job.poll()
    assert job.status == "ok"
    assert seen.progress[-1] == Progress("count", 3, 3, 1)


def test_a_failing_process_gives_one_line_and_details():
    script = (
        "import sys; print('Traceback: deep inside', file=sys.stderr); "
        "print('error: the input is wrong; fix it', file=sys.stderr); sys.exit(2)"
    )
    job = Counting(standin(script)).start()
    assert job.wait(timeout=30) == "error"
    assert job.error == "the input is wrong; fix it"
    assert job.message == job.error
    assert "exit code: 2" in job.details()
    assert "Traceback: deep inside" in job.details()


def test_cancel_ends_a_process_job_as_cancelled():
    job = Counting(
        standin('import time; print(\'{"stage": "wait", "done": 0, "total": 1}\', flush=True); time.sleep(60)')
    ).start()
    while not job.progress.stage:
        job.poll()
    job.cancel()
    assert job.wait(timeout=30) == "cancelled"
    assert job.result is None
    assert job.message.startswith("Cancelled")


class Squares(ThreadJob):
    kind = "squares"

    def __init__(self, n, fail=None):
        super().__init__()
        self.n, self.fail = n, fail

    def work(self, report, cancel):
        for i in range(self.n):
            if cancel.cancelled:
                from brainsegfounder.errors import Cancelled

                raise Cancelled("stopped")
            report("square", i + 1, self.n)
        if self.fail:
            raise self.fail
        return [i * i for i in range(self.n)]


def test_a_thread_job_has_the_same_interface():
    job = Squares(4).start()
    assert job.wait(timeout=10) == "ok"
    assert job.result == [0, 1, 4, 9]
    assert job.progress == Progress("square", 4, 4)
    failed = Squares(2, fail=UserError("the file is not a model; choose a .pt file")).start()
    assert failed.wait(timeout=10) == "error"
    assert failed.error == "the file is not a model; choose a .pt file"
    broken = Squares(2, fail=KeyError("meta")).start()
    assert broken.wait(timeout=10) == "error"
    assert broken.error == "squares failed: 'meta'"
    assert "KeyError" in broken.details()  # a defect shows its traceback in the details
    stopped = Squares(10**9)
    stopped.start().cancel()
    assert stopped.wait(timeout=10) == "cancelled"


def test_one_job_per_slot_and_setup_jobs_share_one():
    jobs = Jobs()
    first = jobs.run(Squares(10**9))
    with pytest.raises(UserError, match="wait for the running squares"):
        jobs.run(Squares(1))
    assert jobs.slot_of("download") == jobs.slot_of("install") == jobs.slot_of("import") == jobs.slot_of("devices")
    first.cancel()
    first.wait(timeout=10)
    assert jobs.run(Squares(1)).wait(timeout=10) == "ok"


def test_signals_call_each_slot_until_disconnected():
    signal, calls = Signal(), []
    slot = signal.connect(calls.append)
    signal.emit(1)
    signal.disconnect(slot)
    signal.emit(2)
    assert calls == [1]


# -- the setup jobs through the Logic -------------------------------------------------------------
def _wheel(folder, name, version):
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


@pytest.fixture
def offline_pip(tmp_path, monkeypatch):
    """pip that installs from a folder of wheels into a target folder, never from the internet."""
    wheels, target = tmp_path / "wheels", tmp_path / "target"
    wheels.mkdir()
    _wheel(wheels, "bsf_addon", "1.0")
    for name, value in {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_TARGET": str(target),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CONFIG_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    return target


def test_install_job_runs_pip_under_the_constraints(offline_pip, home):
    logic = WorkflowLogic(new_scene()[0])
    plan = dependencies.InstallPlan(pip=["bsf_addon>=1"], constraints={"bsf_shipped": "1.0"})
    job = logic.start_install(plan)
    assert job.wait(timeout=300) == "ok", job.details()
    assert job.result.requirements == ("bsf_addon>=1",)
    assert not job.result.restart_required
    assert job.message == "Packages installed."
    assert (offline_pip / "bsf_addon" / "__init__.py").is_file()
    assert "--constraint" in job.details()
    assert not job._folder.exists()  # the constraints file is gone


def test_install_job_gives_torch_to_the_extension_first(offline_pip, home):
    """PyTorch Utils gets torch (with MONAI's range); pip installs the rest. Where PyTorch Utils
    fails, pip is asked for torch too: here it cannot find it, and that is the error line."""
    asked = []
    plan = dependencies.plan(
        version_of={}.get, packages=[("torch", "torch", "torch>=2.8,<3"), ("bsf_addon", "bsf_addon", "bsf_addon>=1")]
    )
    plan.pytorch_utils = True
    done = InstallJob(plan, torch_installer=lambda requirement: asked.append(requirement) or True).start()
    assert done.wait(timeout=300) == "ok", done.details()
    assert asked == [">=2.8,<3"]
    assert done.result.requirements == ("bsf_addon>=1",)
    refused = InstallJob(plan, torch_installer=lambda requirement: False).start()
    assert refused.wait(timeout=300) == "error"
    assert refused.error.startswith("installing packages failed: ")
    assert "torch" in refused.error
    assert "\n" not in refused.error
    nothing = InstallJob(dependencies.InstallPlan()).start()
    assert nothing.wait(timeout=5) == "ok"  # nothing to install: over at once


def test_download_job_through_the_logic(home, tmp_path, server):  # noqa: F811
    payload = bytes(range(256)) * 20000
    RangeHandler.payload, RangeHandler.requests = payload, []
    registry = registry_with(tmp_path, f"{server}/served.pt", hashlib.sha256(payload).hexdigest(), len(payload))
    logic = WorkflowLogic(new_scene()[0], ModelManager(registry, cache=tmp_path / "dl"))
    seen = Recorder(logic.jobs)
    job = logic.start_download(logic.models.choice("registry:served"))
    while job.running:
        logic.jobs.poll()
    assert job.status == "ok", job.error
    assert job.result == "registry:served"
    assert job.message == "Downloaded Served model; SHA-256 verified."
    assert logic.models.choice(job.result).available
    # The board shows the latest report when it polls (the byte counts are test_model_manager's): however fast
    # the download, the last one, the verified checksum, reaches the front end.
    last = seen.progress[-1]
    assert (last.stage, last.done, last.total) == ("verify", 1, 1)
    with pytest.raises(UserError, match="cannot be downloaded"):
        logic.start_download(logic.models.choice("registry:served"))  # it is here now


def test_download_job_with_a_wrong_checksum_fails_with_one_line(home, tmp_path, server):  # noqa: F811
    RangeHandler.payload, RangeHandler.requests = b"x" * 1000, []
    registry = registry_with(tmp_path, f"{server}/served.pt", hashlib.sha256(b"other").hexdigest())
    logic = WorkflowLogic(new_scene()[0], ModelManager(registry, cache=tmp_path / "dl"))
    job = logic.start_download(logic.models.choice("registry:served"))
    assert job.wait(timeout=60) == "error"
    assert "does not match its published SHA-256" in job.error


def test_import_job_recognises_a_registry_model(home, tmp_path):
    logic = WorkflowLogic(new_scene()[0], ModelManager(cache=tmp_path / "dl"))
    copy = tmp_path / "usb" / "renamed.pt"
    copy.parent.mkdir()
    shutil.copyfile(logic.models.choice(DEMO).path, copy)
    job = logic.start_import(copy)
    assert job.wait(timeout=60) == "ok", job.error
    assert job.result == DEMO
    assert job.message == f"Imported {logic.models.choice(DEMO).title} (SHA-256 verified)."
    with pytest.raises(UserError, match="is not a file"):
        logic.start_import(tmp_path / "missing.pt")


def test_device_choices_for_a_selector():
    devices = [{"id": "cpu", "name": "CPU"}, {"id": "cuda:0", "name": "NVIDIA H200", "memory_gib": 139.8}]
    assert device_choices(devices) == [("auto", "auto"), ("CPU", "cpu"), ("cuda:0: NVIDIA H200, 139.8 GiB", "cuda:0")]


@pytest.mark.slow
def test_device_query_job_runs_the_engine(home):
    logic = WorkflowLogic(new_scene()[0])
    job = logic.start_device_query()
    assert job.wait(timeout=300) == "ok", job.details()
    assert job.result[:2] == [("auto", "auto"), ("CPU", "cpu")]
    assert json.dumps(job.result)  # plain data, for any front end
