"""Every entry point against a table of bad inputs and faults, as a user meets them.

Each row (Testing/faults/bad_inputs.py) runs the real command (``python -m brainsegfounder
...``) in a fresh copy of one folder (a data set, a model, earlier results, bad files) and
asserts: the exit code, exactly one line on stderr that starts with ``error:``, no traceback,
a bounded peak memory, and that the folder is exactly as before (no file changed that existed,
no file or folder left that did not). The README's "Bad input and faults" table is this table;
Testing/benchmarks/bad_input_cost.py prints each row's time and memory. The Slicer Logic's rows
are in Testing/slicer/test_logic_bad_input.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from bad_inputs import GOOD_SEGMENT, ROWS, build_world, command_of, fresh_world, run
from helpers import ROOT, tree_state

pytestmark = pytest.mark.slow
# A rejected input must cost little: 4.5 GB were once allocated for a 384-byte file. The exact
# figures (under 300 MB for most rows) come from Testing/benchmarks/bad_input_cost.py.
PEAK_MIB_BOUND = 1024


@pytest.fixture(scope="session")
def template(tmp_path_factory, brats_root, brats_model):
    return build_world(tmp_path_factory.mktemp("world") / "w", brats_root, brats_model)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_bad_input(template, tmp_path, row):
    if row.unprivileged and not (os.geteuid() == 0 and shutil.which("setpriv")):
        pytest.skip("a file the user may not read needs a non-root user; root without DAC override needs setpriv")
    world = fresh_world(template, tmp_path)
    before = tree_state(world)
    result = run(world, row.argv(), row.unprivileged)
    assert result.peak_mib < PEAK_MIB_BOUND, f"{result.peak_mib:.0f} MiB to reject it"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "internal error" not in lines[0]
    assert re.search(row.pattern, lines[0]), lines[0]
    assert tree_state(world) == before, "a rejected run changed or left files"


STAGES = ["load_model", "read", "inference", "write"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_each_stage_of_segment(template, tmp_path, stage):
    """Killed at any stage, a run leaves the earlier results whole, or all the new ones; the
    next run removes what the killed one left in the staging area."""
    world = fresh_world(template, tmp_path)
    outputs = ["labels.nii.gz", "labels.seg.nrrd", "summary.json", "preview.png"]
    before = {name: (world / "out" / name).stat().st_ino for name in outputs}  # a commit renames: new inodes
    command, env = command_of(world, [*GOOD_SEGMENT.argv(), "--progress", "json", "--overlap", "0.75"])
    process = subprocess.Popen(
        command, cwd=world, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in process.stdout:
        if json.loads(line).get("stage") == stage:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    changed = [name for name in outputs if (world / "out" / name).stat().st_ino != before[name]]
    assert changed in ([], outputs), f"killed in {stage}: only {changed} were replaced"
    again = run(world, GOOD_SEGMENT.argv())
    assert again.returncode == 0, again.stderr
    staging = world / "out" / ".brainsegfounder"
    assert sorted(p.name for p in staging.iterdir()) == ["written.json"], "temporaries left behind"


def test_the_readme_documents_every_row():
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Bad input and faults")[1].split("\n## ")[0]
    missing = [row.id for row in ROWS if row.fault.split(": ")[-1] not in section]
    assert not missing, f"rows missing from the README's table: {missing}"
