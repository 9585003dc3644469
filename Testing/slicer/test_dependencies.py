"""The dependency check: what is missing, and pins that keep Slicer's own packages untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from brainsegfounder.errors import UserError
from BrainSegFounderSlicerLib import dependencies
from BrainSegFounderSlicerLib.dependencies import plan


def test_nothing_to_install_where_everything_is_there():
    result = plan(training=True)
    assert result.empty, result.summary()


def test_plan_for_a_fresh_slicer_python():
    shipped = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "scipy": "1.13.1", "requests": "2.32.3"}
    result = plan(version_of=shipped.get, loaded=["numpy"], pytorch_utils=False)
    assert result.torch == "torch>=2.8,<3"
    assert "monai>=1.6,<1.7" in result.pip
    assert "slicerio>=1.4" in result.pip
    assert "openvino>=2024.4,<2027" in result.pip  # the CPU runtime: 2.5x PyTorch's forward
    assert not any(r.startswith(("numpy", "SimpleITK", "scipy")) for r in result.pip)  # Slicer's stay
    assert result.constraints == shipped
    assert "numpy==1.26.4\n" in result.constraints_text()
    assert not result.restart_required  # nothing to change is loaded yet
    text = result.summary()
    assert "torch>=2.8,<3" in text
    assert "numpy 1.26.4" in text
    assert "restart" not in text
    assert "torchvision" not in text  # pip installs torch alone
    through_extension = plan(version_of=shipped.get, loaded=[], pytorch_utils=True)
    assert through_extension.torch == "torch>=2.8,<3"
    assert through_extension.pip == result.pip
    assert "torch>=2.8,<3 and torchvision (through the PyTorch Utils extension" in through_extension.summary()
    assert plan(version_of=shipped.get, loaded=[]).pytorch_utils is False  # not installed in this Python


def test_an_old_loaded_package_means_restart():
    versions = {
        "torch": "2.1.0",
        "monai": "1.6.1",
        "einops": "0.8.0",
        "nibabel": "5.3.0",
        "scipy": "1.14.0",
        "slicerio": "1.4.0",
        "onnx": "1.17.0",
        "openvino": "2025.1.0",
        "deepbet": "1.0.2",
    }
    result = plan(version_of=versions.get, loaded=["torch"])
    assert result.torch == "torch>=2.8,<3"
    assert result.pip == []
    assert result.restart_required
    assert "restarted" in result.summary()


def test_a_requirement_that_would_replace_a_shipped_package_is_refused():
    versions = {
        "torch": "2.6.0",
        "monai": "1.6.1",
        "einops": "0.8.0",
        "nibabel": "5.3.0",
        "scipy": "1.5.0",
        "slicerio": "1.4.0",
        "onnx": "1.17.0",
        "openvino": "2025.1.0",
        "deepbet": "1.0.2",
    }
    with pytest.raises(UserError, match="newer scipy than this Slicer ships"):
        plan(version_of=versions.get)


def _wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    """A tiny metadata-only wheel, enough for pip's resolver."""
    info = f"{name}-{version}.dist-info"
    metadata = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    )
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA", metadata)
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def test_pip_honours_the_constraints(tmp_path):
    """pip keeps a pinned package at its pin: offline, on tiny wheels where the newest release of
    the requested package needs a newer version of the pinned one."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "bsf_shipped", "1.0")
    _wheel(wheels, "bsf_shipped", "2.0")
    _wheel(wheels, "bsf_addon", "1.0", "bsf_shipped>=1")
    _wheel(wheels, "bsf_addon", "2.0", "bsf_shipped>=2")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("bsf_shipped==1.0\n")
    offline = ["--dry-run", "--ignore-installed", "--no-index", "--find-links", str(wheels), "--quiet"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull}

    def resolve(requirement):
        report = tmp_path / "report.json"
        command = dependencies.pip_command(sys.executable, [requirement], constraints)
        result = subprocess.run(
            [*command, *offline, "--report", str(report)], capture_output=True, text=True, env=env, timeout=120
        )
        if result.returncode:
            return result
        return {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}

    # unconstrained, pip would take bsf_addon 2.0 and replace bsf_shipped with 2.0
    assert resolve("bsf_addon") == {"bsf_addon": "1.0", "bsf_shipped": "1.0"}
    refused = resolve("bsf_shipped>=2")
    assert not isinstance(refused, dict), refused
    assert "bsf-shipped" in refused.stderr.lower().replace("_", "-"), refused.stderr


def test_the_plan_pins_what_the_package_requires():
    """One list of pins: pyproject.toml and the plan both read the engine's requirements files."""
    from pathlib import Path

    from setuptools.config.pyprojecttoml import read_configuration

    project = read_configuration(Path(__file__).resolve().parents[2] / "pyproject.toml")["project"]
    assert {r for _, _, r in dependencies.RUNTIME} <= set(project["dependencies"])
    assert {r for _, _, r in dependencies.TRAINING} <= set(project["optional_dependencies"]["training"])
    assert ("yaml", "PyYAML", "PyYAML>=6") in dependencies.TRAINING
    torch = next(r for _, d, r in dependencies.RUNTIME if d == "torch")
    assert plan(version_of={"torch": "2.13.0"}.get, packages=[("torch", "torch", torch)]).torch is None
