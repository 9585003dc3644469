"""The label-efficiency study (Testing/benchmarks/label_efficiency.py) at its smoke size: two arms,
one seed, two label fractions, killed mid-run and continued by the same command."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, wait_until

SCRIPT = ROOT / "Testing" / "benchmarks" / "label_efficiency.py"
ARMS = "scratch-resenc,mae-resenc"  # the cheapest backbone, from scratch and from its own pretraining
SMOKE = ["--size", "smoke", "--arms", ARMS, "--seeds", "0", "--fractions", "0.25,1", "--device", "cpu"]


def study(out, *options, **kwargs):
    return subprocess.Popen([sys.executable, str(SCRIPT), *SMOKE, "--out", str(out), *options], text=True, **kwargs)


def finished(run):
    """Each finished unit's done.json: its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("done.json")}


@pytest.mark.slow
def test_a_smoke_study_writes_its_table_plot_and_report_and_continues_after_a_kill(tmp_path):
    run = tmp_path / "study"
    first = run / "finetune" / "scratch-resenc" / "f0.25-s0" / "done.json"
    second = run / "finetune" / "mae-resenc" / "f0.25-s0" / "run" / "recipe.yaml"
    killed = study(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # SIGKILL the study and the fine-tuning it runs, mid-way through the second fine-tuning
        wait_until(lambda: second.exists() or killed.poll() is not None, 600, f"{second} to be written")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert first.exists()
    assert not second.parent.parent.joinpath("done.json").exists()
    assert not (run / "table.md").exists()  # nothing is written before every unit is done
    before = finished(run)
    assert {p.relative_to(run).parts[0] for p in before} == {"data", "pretrain", "finetune"}

    # continued two units at a time: the rest of the fine-tunings side by side, each after what it needs
    resumed = study(run, "--jobs", "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-2000:]
    assert out.count("done before, kept") == len(before)
    after = finished(run)
    assert all(after[p] == before[p] for p in before)  # finished units were not redone
    assert len(after) == len(before) + 3  # the killed fine-tuning and the two after it

    rows = list(csv.DictReader((run / "results.csv").open()))
    assert {(r["arm"], float(r["fraction"])) for r in rows} == {(a, f) for a in ARMS.split(",") for f in (0.25, 1.0)}
    for row in rows:
        for region in ("TC", "WT", "ET"):
            assert 0 <= float(row[f"dice_{region}"]) <= 1
            assert 0 <= float(row[f"lesion_dice_{region}"]) <= 1
        assert float(row["finetune_cpu_s"]) > 0
    assert {int(r["labelled_cases"]) for r in rows} == {1, 4}  # 25% and 100% of the 4 training cases
    table = (run / "table.md").read_text(encoding="utf-8")
    assert "| scratch (ResEnc) | 25% | 1 | 1 |" in table
    assert "| MAE (ResEnc) | 100% | 4 | 1 |" in table
    assert (run / "dice_vs_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "label_efficiency.py --size smoke" in report
    assert "brainsegfounder pretrain --config mae-tiny" in report
    assert json.loads((run / "study.json").read_text())["arms"] == ARMS.split(",")
    cohort = json.loads((run / "data" / "glioma" / "datalist.json").read_text())["description"]
    assert {"texture", "infiltration", "contrast"} <= set(cohort["world"])  # the realistic world


def test_a_study_with_bad_arms_or_another_study_in_its_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    from label_efficiency import main

    assert main([*SMOKE[:2], "--arms", "scratch-unet", "--out", str(tmp_path / "a")]) == 2
    assert "--arms: scratch-unet; choose from scratch-swinunetr" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "study.json").write_text(json.dumps({"size": "small"}))
    assert main([*SMOKE, "--out", str(tmp_path / "b")]) == 2
    assert "holds another study (--size small)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["study.json"]


def test_a_unit_made_by_other_commands_is_made_again_with_the_units_that_need_it(tmp_path, capsys):
    """A study continued with more arms keeps what stands; a unit whose commands changed since (the
    study's code) is redone, and so is every unit made from it."""
    sys.path.insert(0, str(SCRIPT.parent))
    from label_efficiency import kept_units, plan_of
    from label_efficiency_plan import SIZES, plan

    units = plan(SIZES["smoke"], ["scratch-resenc", "mae-resenc"], [1.0], [0])
    by_key = {u.key: u for u in units}
    for unit in units:
        (tmp_path / unit.key).mkdir(parents=True)
        (tmp_path / unit.key / "done.json").write_text(json.dumps({"plan": plan_of(unit)}))
    assert kept_units(units, tmp_path) == set(by_key)
    stale = json.loads((tmp_path / "pretrain/mae-resenc/done.json").read_text())
    stale["plan"][0][-1] += "x"  # the pretraining was made by another command
    (tmp_path / "pretrain/mae-resenc/done.json").write_text(json.dumps(stale))
    kept = kept_units(units, tmp_path)
    assert set(by_key) - kept == {"pretrain/mae-resenc", "finetune/mae-resenc/f1-s0"}
    assert not (tmp_path / "pretrain/mae-resenc").exists()  # cleared, to be made again
    assert not (tmp_path / "finetune/mae-resenc/f1-s0").exists()
    assert (tmp_path / "finetune/scratch-resenc/f1-s0/done.json").exists()
    assert "made again" in capsys.readouterr().out
