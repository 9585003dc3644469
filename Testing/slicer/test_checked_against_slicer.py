"""What a static read of Slicer's, CTK's and the Extensions Index's sources found, kept true.

Slicer itself is not here, so each of these checks our files against a fact read in those
sources (the facts are in the docstrings; FACTS.md 4b has the versions).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from BrainSegFounderSlicerLib import dependencies

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "BrainSegFounderSlicer"


def _floor(requirement: str) -> Version:
    return max(Version(s.version) for s in Requirement(requirement).specifier if s.operator in (">=", "=="))


def test_the_extension_depends_on_the_pytorch_extension():
    """MONAIAuto3DSeg and TotalSegmentator declare EXTENSION_DEPENDS PyTorch, so torch comes in the
    CUDA build PyTorch Utils picks; the index entry and the .s4ext say the same."""
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'^set\(EXTENSION_DEPENDS "PyTorch"\)', top, re.M)
    assert "depends PyTorch" in (ROOT / "BrainSegFounderSlicer.s4ext").read_text().splitlines()
    entry = json.loads((ROOT / "BrainSegFounderSlicer.json").read_text())
    assert entry["build_dependencies"] == ["PyTorch"]
    assert {"$schema", "category", "scm_url"} <= set(entry)


def test_the_training_folder_installs_without_a_second_qt_scripted_modules_tree():
    """ctkMacroCompilePythonScript installs DESTINATION_DIR itself (a qt-scripted-modules/ folder
    inside qt-scripted-modules/) unless NO_INSTALL_SUBDIR is given; Slicer's own
    slicerMacroBuildScriptedModule passes it."""
    text = (MODULE / "CMakeLists.txt").read_text()
    calls = re.findall(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, re.S)
    assert len(calls) == 1
    options = [line.split("#")[0].strip() for line in calls[0].splitlines()]
    assert "NO_INSTALL_SUBDIR" in options
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in options


def test_torch_requirement_is_what_monai_needs():
    """MONAI 1.6 requires torch >= 2.8: with an older torch present, installing MONAI would make
    pip replace torch from PyPI (a CPU build on Windows) behind PyTorch Utils' back."""
    torch = next(r for _, d, r in dependencies.RUNTIME if d == "torch")
    monai = next(r for _, d, r in dependencies.RUNTIME if d == "monai")
    assert _floor(monai) >= Version("1.6")
    assert _floor(torch) >= Version("2.8")
    # and against the MONAI installed here: our floor is at least the one it declares
    requires = [Requirement(r) for r in metadata.requires("monai") or []]
    declared = [str(r) for r in requires if r.name == "torch" and not r.marker]
    assert declared, "monai declares no torch requirement?"
    assert _floor(torch) >= _floor(declared[0])
    # a Slicer torch in the window MONAI rejects is planned for an upgrade, not left in place
    assert dependencies.plan(version_of={"torch": "2.7.1"}.get, packages=[("torch", "torch", torch)]).torch == torch
    # and PyTorch Utils is asked for the same range
    assert dependencies.pytorch_utils_requirement(torch) == ">=2.8,<3"


def test_sample_data_uses_the_keywords_slicer_accepts():
    """SampleDataLogic.registerCustomSampleDataSource (5.8 and 5.10): ``loadFileType`` is the
    deprecated spelling of ``loadFileTypes``."""
    from BrainSegFounderSlicerLib.sampledata import sample_data_source

    accepted = {
        "category",
        "sampleName",
        "uris",
        "fileNames",
        "nodeNames",
        "customDownloader",
        "thumbnailFileName",
        "loadFileTypes",
        "loadFiles",
        "loadFileProperties",
        "checksums",
    }
    source = sample_data_source()
    assert set(source) <= accepted
    assert source["loadFileTypes"] == ["VolumeFile"] * len(source["uris"])
