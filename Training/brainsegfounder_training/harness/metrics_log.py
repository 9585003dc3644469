"""metrics.jsonl (what the Slicer panel plots) and TensorBoard: one record per line, rank 0 only."""

from __future__ import annotations

import json
from typing import Optional

from brainsegfounder.progress import read_jsonl

from .run_folder import RunFolder, to_plain


class MetricsLog:
    """Appends records to the run's metrics.jsonl and, when TensorBoard is installed, its scalars.

    Args:
        run: the run folder.
        enabled: False on every process but rank 0.
        keep_until: when resuming, the step or epoch of the state resumed from; records written
            after it (by the run that was stopped) are dropped so none appears twice. None: a run
            from the start, which drops any records of an attempt killed before its first state.
        key: the record field ``keep_until`` compares with ("epoch" or "step").
    """

    def __init__(self, run: RunFolder, enabled: bool, keep_until: Optional[int], key: str = "epoch"):
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.run = run
        if self.path.exists():
            kept = [] if keep_until is None else [r for r in read_jsonl(self.path) if r.get(key, 0) <= keep_until]
            run.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"))
        except ImportError:  # TensorBoard is optional; the JSON lines carry everything
            self.writer = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.run.append_text(
            "metrics.jsonl", json.dumps(record, default=to_plain) + "\n", "the last saved state is kept in state.pt."
        )
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record['type']}/{key}", value, step)
            for name, value in (record.get("val_dice") or {}).items():
                self.writer.add_scalar(f"val_dice/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
