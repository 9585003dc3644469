"""Background work behind one interface, for every front end (the Slicer panel, a web app).

Every long piece of work (segment, fine-tune, install packages, download, import, device query)
is a :class:`Job`. A front end starts it through the Logic (``logic.start_segmentation(...)``
and so on), calls :meth:`Job.poll` from its own timer or event loop, never waits on it, and
listens to two signals:

- ``job.progress_changed(job)``: ``job.progress`` (stage, done, total, ETA, message) is new;
- ``job.finished(job)``: ``job.status`` is ``"ok"``, ``"error"`` or ``"cancelled"``; then
  ``job.result`` (what the job made, see each job), ``job.message`` (one line for people),
  ``job.error`` (one line, with a remedy) and ``job.details()`` (everything else).

``job.cancel()`` asks it to stop; it finishes as ``"cancelled"`` at its next check and changes
nothing. Whatever a job does to the scene it does inside ``poll()``, on the caller's thread,
never on a worker thread. :class:`Jobs` holds the jobs a front end runs, one per slot.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional

from brainsegfounder.errors import Cancelled, UserError
from brainsegfounder.progress import CancelToken

from .runner import BackgroundProcess

OK, ERROR, CANCELLED = "ok", "error", "cancelled"


class Signal:
    """A list of callbacks: ``connect(slot)``, ``disconnect(slot)``, ``emit(*args)``."""

    def __init__(self) -> None:
        self._slots: List[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> Callable[..., Any]:
        self._slots.append(slot)
        return slot

    def disconnect(self, slot: Callable[..., Any]) -> None:
        self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)


@dataclass(frozen=True)
class Progress:
    """What a front end shows while a job runs."""

    stage: str = ""
    done: int = 0
    total: int = 0
    eta_s: Optional[float] = None
    message: str = ""
    unit: str = ""  # "bytes": done and total are bytes (shown in MB)

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def text(self) -> str:
        if self.unit == "bytes":
            count = f"{self.done / 1e6:.0f} / {self.total / 1e6:.0f} MB" if self.total else f"{self.done / 1e6:.0f} MB"
        else:
            count = f"{self.done}/{self.total}" if self.total else ""
        eta = f", about {self.eta_s:.0f} s left" if self.eta_s else ""
        head = " ".join(p for p in (self.stage, count) if p) + eta
        return f"{head}: {self.message}" if self.message and head else (self.message or head)


class Job:
    """The interface (see the module's docstring); subclasses run a process or a thread."""

    kind = "job"

    def __init__(self) -> None:
        self.progress = Progress()
        self.status: Optional[str] = None  # None while running
        self.result: Any = None
        self.message = ""
        self.error: Optional[str] = None
        self.progress_changed = Signal()
        self.finished = Signal()
        self._extra_details = ""

    # -- the interface -----------------------------------------------------------------------
    def start(self) -> "Job":
        self._start()
        return self

    def poll(self) -> bool:
        """Read new progress; True once the job is over (``status`` is set, ``finished`` emitted)."""
        if self.status is not None:
            return True
        if self._read():
            self.progress_changed.emit(self)
        outcome = self._outcome()
        if outcome is None:
            return False
        self._finish(outcome)
        return True

    def cancel(self) -> None:
        """Ask the work to stop (it ends as ``cancelled``, having changed nothing)."""

    def details(self) -> str:
        """Everything a one-line error leaves out (command, exit code, output, traceback)."""
        return self._extra_details

    def wait(self, timeout: Optional[float] = None, interval: float = 0.1) -> Optional[str]:
        """Poll until over (scripts and tests; a front end polls from its timer); the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.kind} job still running after {timeout} s; cancelled")
            time.sleep(interval)
        return self.status

    @property
    def running(self) -> bool:
        return self.status is None

    # -- for subclasses ----------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _read(self) -> bool:
        """Take new progress into ``self.progress``; True if it changed."""
        return False

    def _outcome(self) -> Optional[str]:
        """None while the work runs, then ok / error / cancelled."""
        raise NotImplementedError

    def _error_line(self) -> str:
        return "the job failed; see the details"

    def _succeeded(self) -> Any:
        """Finish the work on the caller's thread (e.g. load results into the scene); the result."""
        return None

    def _done_message(self) -> str:
        return "Done."

    def _cancelled_message(self) -> str:
        return "Cancelled; nothing was changed."

    def _cleanup(self) -> None:
        """Remove temporary files, whatever the outcome."""

    def _finish(self, outcome: str) -> None:
        try:
            if outcome == OK:
                self.result = self._succeeded()
            elif outcome == ERROR:
                self.error = self._error_line()
        except UserError as error:
            self.error = str(error)
        except Exception as error:  # a defect, not a user's mistake: one line, the trace in details
            self.error = f"{self.kind} failed: {error}"
            self._extra_details += "\n" + traceback.format_exc()
        finally:
            self._cleanup()
        self.status = ERROR if self.error else outcome
        if self.status == OK:
            self.message = self._done_message()
        elif self.status == CANCELLED:
            self.message = self._cancelled_message()
        else:
            self.message = self.error or ""
        self.finished.emit(self)


class ProcessJob(Job):
    """Work in a background process (:class:`.runner.BackgroundProcess`) that reports progress as
    JSON lines; a line that is not JSON becomes the progress message (pip's output)."""

    def __init__(self, process: Optional[BackgroundProcess] = None) -> None:
        super().__init__()
        self.process = process  # None: nothing to run (the job is over as soon as it is polled)

    def _start(self) -> None:
        if self.process is not None and self.process.process is None:
            self.process.start()

    def _read(self) -> bool:
        if self.process is None:
            return False
        changed = False
        for event in self.process.poll():
            if "stage" in event:
                self.progress = Progress(
                    event["stage"],
                    int(event.get("done", 0)),
                    int(event.get("total", 0)),
                    event.get("eta_s"),
                    event.get("message", ""),
                )
                changed = True
            elif "log" in event:
                self.progress = Progress(self.progress.stage, message=event["log"][-200:])
                changed = True
        return self._on_progress() or changed

    def _on_progress(self) -> bool:
        """Hook after new progress was read (e.g. redraw a plot); True if something changed."""
        return False

    def _outcome(self) -> Optional[str]:
        if self.process is None:
            return OK
        if not self.process.finished:
            return None
        # The last lines (and the reaping of the process group): progress written just before the
        # process ended is shown too, not dropped with the final line.
        if self._read():
            self.progress_changed.emit(self)
        return self.process.status

    def _error_line(self) -> str:
        return self.process.error_line()

    def details(self) -> str:
        return (self.process.details() if self.process is not None else "") + self._extra_details

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()


class ThreadJob(Job):
    """Work in a worker thread: ``work(report, cancel)`` returns a value or raises (UserError: the
    error line; Cancelled: cancelled). ``report(stage, done, total, message="")`` is the progress
    protocol's callback; ``cancel`` is a :class:`CancelToken` the work checks. The thread never
    touches the scene: ``_succeeded`` (on the caller's thread) turns its value into the result."""

    def __init__(self, unit: str = "") -> None:
        super().__init__()
        self.cancel_token = CancelToken()
        self._unit = unit
        self._latest = self.progress
        self._value: Any = None
        self._raised: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def work(self, report: Callable[..., None], cancel: CancelToken) -> Any:
        raise NotImplementedError

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"brainsegfounder-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def report(stage: str, done: int = 0, total: int = 0, message: str = "", **_: Any) -> None:
            self._latest = Progress(stage, int(done), int(total), None, message, self._unit)

        try:
            self._value = self.work(report, self.cancel_token)
        except BaseException as error:
            self._raised = error
            if not isinstance(error, (UserError, Cancelled)):
                self._extra_details = "".join(traceback.format_exception(type(error), error, error.__traceback__))

    def _read(self) -> bool:
        latest = self._latest  # one reference read: the worker replaces it whole
        if latest is self.progress:
            return False
        self.progress = latest
        return True

    def _outcome(self) -> Optional[str]:
        if self._thread is None or self._thread.is_alive():
            return None
        if self._read():  # the last report, made after poll() read the progress: front ends see it too
            self.progress_changed.emit(self)
        if isinstance(self._raised, Cancelled) or (self._raised is None and self.cancel_token.cancelled):
            return CANCELLED
        return ERROR if self._raised is not None else OK

    def _error_line(self) -> str:
        if isinstance(self._raised, UserError):
            return str(self._raised)
        return f"{self.kind} failed: {self._raised}"

    def _succeeded(self) -> Any:
        return self._value

    def cancel(self) -> None:
        self.cancel_token.cancel()


class Jobs:
    """The jobs one front end runs, at most one per slot (``segment``, ``finetune``, ``setup``:
    the one install, download, import or device query). ``poll()`` polls them all; the board's
    ``progress_changed`` / ``finished`` signals repeat those of its jobs, and ``started`` says
    one began, so a front end connects once."""

    # install, download, import and device queries share one slot; any other kind is its own slot
    SLOTS: ClassVar[Dict[str, str]] = {"install": "setup", "download": "setup", "import": "setup", "devices": "setup"}

    def __init__(self) -> None:
        self._running: Dict[str, Job] = {}
        self.started = Signal()
        self.progress_changed = Signal()
        self.finished = Signal()

    def slot_of(self, kind: str) -> str:
        return self.SLOTS.get(kind, kind)

    def busy(self, slot: str) -> Optional[Job]:
        """The job running in ``slot``, or None."""
        return self._running.get(slot)

    def run(self, job: Job) -> Job:
        """Start ``job`` and follow it; refused with one line while its slot is busy."""
        current = self._running.get(self.slot_of(job.kind))
        if current is not None:
            raise UserError(f"wait for the running {current.kind} to finish (or cancel it) first")
        job.start()
        self._running[self.slot_of(job.kind)] = job
        job.progress_changed.connect(self.progress_changed.emit)
        job.finished.connect(self._on_finished)
        self.started.emit(job)
        return job

    def _on_finished(self, job: Job) -> None:
        slot = self.slot_of(job.kind)
        if self._running.get(slot) is job:
            del self._running[slot]
        self.finished.emit(job)

    def poll(self) -> None:
        for job in list(self._running.values()):
            job.poll()

    def cancel_all(self) -> None:
        for job in list(self._running.values()):
            job.cancel()
