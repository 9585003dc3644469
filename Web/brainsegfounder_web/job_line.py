"""A background job of the Lib on the page: busy flag, progress (percent) and its one line of
text in the state under a prefix, polled by the app's poller; ``on_done(job)`` when it ends."""

from __future__ import annotations

from typing import Callable, Optional


class JobLine:
    def __init__(self, state, prefix: str, on_done: Callable[[object], None]) -> None:
        self.state, self.prefix, self.on_done = state, prefix, on_done
        self.job: Optional[object] = None
        self._set(busy=False, progress=0, text="")

    def _set(self, **values) -> None:
        for key, value in values.items():
            self.state[f"{self.prefix}_{key}"] = value

    def start(self, job) -> None:
        self.job = job
        self._set(busy=True, progress=0, text="starting")

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()

    def poll(self) -> None:
        job = self.job
        if job is None or not job.running:
            return
        job.poll()
        self._set(progress=round(100 * job.progress.fraction), text=job.progress.text())
        if not job.running:
            self._set(busy=False, text=job.message or "")
            self.job = None
            self.on_done(job)
