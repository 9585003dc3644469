"""The Slicer module's build lists, panel and light start-up, checked against the tree.

Slicer itself is not here, so these check what can go stale without it: every file is listed
in CMake, every widget the Widget uses is in the .ui, every bound parameter exists, the
module's imports pull in no torch, and the Sample Data case is what its checksums say.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "BrainSegFounderSlicer"


def cmake_list(text: str, variable: str):
    block = re.search(rf"set\({variable}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [
        line.strip().replace("${MODULE_NAME}", "BrainSegFounderSlicer") for line in block.splitlines() if line.strip()
    ]


def test_module_cmake_lists_every_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    listed = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    scripts = set(listed)
    assert len(scripts) == len(listed), "a file is listed twice"
    on_disk = {"BrainSegFounderSlicer.py"} | {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py")}
    assert scripts == on_disk
    for resource in cmake_list(text, "MODULE_PYTHON_RESOURCES"):
        assert (MODULE / resource).is_file(), resource
    training = ROOT / "Training"
    assert set(cmake_list(text, "TRAINING_PYTHON_SCRIPTS")) == {
        str(p.relative_to(training)) for p in (training / "brainsegfounder_training").rglob("*.py")
    }
    assert set(cmake_list(text, "TRAINING_RESOURCES")) == {
        str(p.relative_to(training)) for p in (training / "configs").rglob("*.yaml")
    }
    shared = set(cmake_list(text, "EXTENSION_SHARED_RESOURCES"))
    assert {"models.json", "SampleData/sample.json"} <= shared
    registry = json.loads((ROOT / "Resources" / "models.json").read_text())["models"]
    bundled = {e["bundled"] for e in registry if e.get("bundled")}
    assert {"Models/brats-synthetic-demo.pt", "Models/brats-synthetic-realistic.pt"} <= bundled <= shared
    assert all((ROOT / "Resources" / r).is_file() for r in shared)
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert f"set(EXTENSION_{key} " in top
    assert "add_subdirectory(BrainSegFounderSlicer)" in top
    for url in re.findall(r"main/(Resources/\S+?\.png)", top):
        assert (ROOT / url).is_file(), url


def test_panel_has_every_widget_and_parameter_the_module_uses():
    ui = ET.parse(MODULE / "Resources" / "UI" / "BrainSegFounderSlicer.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    source = (MODULE / "BrainSegFounderSlicer.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))  # plus the per-modality rows, reached by getattr
    used |= {f"{m}{kind}" for m in ("flair", "t1ce", "t1", "t2") for kind in ("Selector", "Label")}
    assert used - names == set()
    tree = ast.parse(source)
    node_class = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BrainSegFounderSlicerParameterNode"
    )
    fields = {n.target.id for n in node_class.body if isinstance(n, ast.AnnAssign)}
    assert bound <= fields
    assert {"flair", "t1ce", "t1", "t2", "segmentation", "epochs", "caseId"} <= bound
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {
        "BrainSegFounderSlicer",
        "BrainSegFounderSlicerWidget",
        "BrainSegFounderSlicerLogic",
        "BrainSegFounderSlicerTest",
    } <= classes


def test_the_module_side_imports_no_torch():
    """Slicer loads the module at start-up, before anyone installed PyTorch: keep it light."""
    code = (
        "import sys; import BrainSegFounderSlicerLib.logic, BrainSegFounderSlicerLib.dependencies, "
        "BrainSegFounderSlicerLib.sampledata; heavy = [m for m in ('torch', 'monai', 'nibabel', 'scipy') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=MODULE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_data_is_what_its_checksums_say():
    from brainsegfounder.modalities import guess_from_text
    from BrainSegFounderSlicerLib.sampledata import SAMPLE_DIR, sample_data_source

    source = sample_data_source()
    assert len(source["uris"]) == 4
    assert Path(source["thumbnailFileName"]).is_file()
    for uri, name, checksum in zip(source["uris"], source["fileNames"], source["checksums"], strict=True):
        path = SAMPLE_DIR / name
        assert uri == path.as_uri()
        assert checksum == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(guess_from_text(n) for n in source["nodeNames"]) == ["flair", "t1", "t1ce", "t2"]
    info = json.loads((SAMPLE_DIR / "sample.json").read_text())
    assert sum(f["label"] for f in info["files"]) == 1
