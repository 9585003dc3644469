"""The progress protocol: one callback for all long work, rendered for people or as JSON lines.

A reporter is called as ``report(stage, done, total, message="")``. The CLI renders it as a
text bar on stderr, or with ``--progress json`` as one JSON object per line on stdout::

    {"stage": "inference", "done": 3, "total": 12, "eta_s": 4.1, "message": ""}

and a final line with ``"status": "ok" | "error" | "cancelled"``. The ETA is per stage, from
the mean time per completed item since the stage started.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from .errors import Cancelled

ProgressCallback = Callable[..., None]


def null_progress(stage: str, done: int, total: int, message: str = "") -> None:
    """A reporter that ignores everything."""


class CancelToken:
    """A flag checked between units of work; set by a signal handler, a GUI, or a test."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT set the flag so work stops at the next window, cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.cancel())


class _StageClock:
    def __init__(self) -> None:
        self.stage: Optional[str] = None
        self.start = 0.0

    def eta(self, stage: str, done: int, total: int) -> Optional[float]:
        now = time.monotonic()
        if stage != self.stage or done == 0:
            self.stage, self.start = stage, now
            return None
        if total <= 0 or done >= total:
            return 0.0
        return (now - self.start) / done * (total - done)


class JsonLinesReporter:
    """Writes one JSON object per line (the protocol the Slicer module reads)."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.clock = _StageClock()

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        eta = self.clock.eta(stage, done, total)
        self._emit(
            {
                "stage": stage,
                "done": done,
                "total": total,
                "eta_s": None if eta is None else round(eta, 1),
                "message": message,
            }
        )

    def finish(self, status: str, message: str = "", **extra) -> None:
        self._emit({"status": status, "message": message, **extra})

    def _emit(self, record: dict) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class TextReporter:
    """A one-line progress bar on stderr for people; messages get their own line. Where the
    stream is not a terminal (a log file) the bar would leave carriage-return noise, so each
    tenth of a stage is a plain line instead."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.clock = _StageClock()
        self._open_line = False
        self._terminal = bool(getattr(stream, "isatty", lambda: False)())
        self._logged = (None, -1)

    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None:
        eta = self.clock.eta(stage, done, total)
        if message:
            self._end_line()
            self.stream.write(f"{stage}: {message}\n")
        if total > 1 and not self._terminal:
            tenth = 10 * min(done, total) // total
            if done > 0 and (stage, tenth) != self._logged and (tenth > self._logged[1] or stage != self._logged[0]):
                self._logged = (stage, tenth)
                eta_text = "" if eta is None or done >= total else f", eta {eta:.1f}s"
                self.stream.write(f"{stage}: {done}/{total}{eta_text}\n")
        elif total > 1:
            filled = int(self.width * min(done, total) / total)
            eta_text = "" if eta is None else f" eta {eta:5.1f}s"
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r{stage:>12} [{bar}] {done}/{total}{eta_text}")
            self._open_line = True
            if done >= total:
                self._end_line()
        self.stream.flush()

    def finish(self, status: str, message: str = "", **extra) -> None:
        self._end_line()
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False


def read_jsonl(path) -> list:
    """The records of a JSON-lines file (metrics, progress logs); a line cut short by a process
    that is still writing or was killed is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
