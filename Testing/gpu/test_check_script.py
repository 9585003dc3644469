"""The GPU check (Testing/gpu/check.sh) runs through on the CPU: ``--dry-run`` takes every stage
at tiny sizes, so a broken stage shows here and not on the first GPU it meets."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from helpers import ROOT

STAGES = (
    "setup", "gpu-tests", "model", "inference",
    "pretrain-brainsegfounder", "pretrain-swin-mae", "pretrain-mae", "pretrain-volume-fusion",
)  # fmt: skip


@pytest.mark.slow  # about 2 minutes of a 2-core CPU
def test_the_dry_run_runs_every_stage_and_writes_its_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("BSF_GPU_TESTS_ON_CPU", "PYTEST_ADDOPTS")}
    proc = subprocess.run(
        ["bash", str(ROOT / "Testing" / "gpu" / "check.sh"), "--dry-run"],
        env={**env, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    table = (tmp_path / "out" / "gpu_check.txt").read_text()
    print(table)  # shown with -s: what the dry run measured
    logs = tmp_path / "out" / "gpu_check_logs.txt"
    assert proc.returncode == 0, f"{table}\n{logs.read_text()[-6000:] if logs.is_file() else proc.stderr[-3000:]}"
    rows = [line.split() for line in table.splitlines()[3:] if line.strip() and not line.startswith("every stage")]
    assert {row[0] for row in rows} >= set(STAGES), table
    assert "FAILED" not in table, table
    for stage in STAGES:  # each stage says it ran
        assert any(row[0] == stage and row[1] == "stage" and "ran in" in " ".join(row) for row in rows), (stage, table)
    # the figures the goals are judged on were read from the benchmarks' own tables
    for what in ("ours (default): model time", "speed vs reference", "peak GPU memory", "ours vs reference loop"):
        assert what in table, (what, table)
    compile_row = next((line for line in table.splitlines() if "torch.compile / CUDA graphs" in line), "")
    assert re.search(r"compile -?[\d.]+ s; (pays|does not pay)", compile_row), table  # tried, timed, judged
    assert "passed" in table  # the GPU tests that mean something on a CPU ran there
    assert not list(tmp_path.glob("bsf-gpu-check.*")), "the work folder is left behind"
