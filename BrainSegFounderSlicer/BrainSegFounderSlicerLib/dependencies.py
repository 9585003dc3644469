"""What the engine needs in Slicer's Python, and how to install it without breaking Slicer.

The module itself loads without any of these (it imports them only in background processes).
An install plan lists what is missing; pip runs with a constraints file that pins every package
Slicer ships (numpy, SimpleITK, ...) to the version Slicer has, so pip can never replace them,
and fails with a clear message instead where a requirement would need that. PyTorch goes
through the PyTorch Utils extension when it is installed (it picks the CUDA build for the GPU).
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from brainsegfounder.errors import UserError

ENGINE_DIR = Path(__file__).resolve().parents[1] / "brainsegfounder"  # beside this Lib, in the tree and installed
# Which of the engine's requirements Slicer's Python may lack: segmentation, then fine-tuning.
# The pins themselves are the engine's requirements files (pyproject.toml reads the same files).
RUNTIME_DISTRIBUTIONS = (
    "torch",
    "monai",
    "einops",
    "nibabel",
    "scipy",
    "slicerio",
    "onnx",
    "openvino",
    "deepbet",
)
TRAINING_DISTRIBUTIONS = ("PyYAML",)
_IMPORT_NAMES = {"PyYAML": "yaml"}  # where the import name is not the distribution's


def _pins(file_name: str) -> Dict[str, str]:
    """distribution -> requirement, from one of the engine's requirements files."""
    lines = (line.split("#", 1)[0].strip() for line in (ENGINE_DIR / file_name).read_text().splitlines())
    return {_distribution(line): line for line in lines if line}


def _distribution(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def _packages(file_name: str, distributions: Sequence[str]) -> Tuple[Tuple[str, str, str], ...]:
    """(import name, distribution, requirement) for each of ``distributions``."""
    pins = _pins(file_name)
    return tuple((_IMPORT_NAMES.get(d, d), d, pins[d]) for d in distributions)


# (import name, distribution, requirement): what segmentation and fine-tuning import
RUNTIME: Tuple[Tuple[str, str, str], ...] = _packages("requirements.txt", RUNTIME_DISTRIBUTIONS)
TRAINING: Tuple[Tuple[str, str, str], ...] = _packages("requirements-training.txt", TRAINING_DISTRIBUTIONS)
# Packages Slicer ships: never upgraded, downgraded or replaced by our installs.
SLICER_SHIPPED = (
    "numpy",
    "SimpleITK",
    "scipy",
    "requests",
    "urllib3",
    "pydicom",
    "vtk",
    "Pillow",
    "packaging",
    "setuptools",
    "pip",
    "certifi",
    "charset-normalizer",
    "idna",
    "six",
    "python-dateutil",
    "chardet",
    "dicomweb-client",
    "retrying",
)


def installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _satisfies(version: str, requirement: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without packaging, presence is all we can check
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


@dataclass
class InstallPlan:
    torch: Optional[str] = None  # the torch requirement, when torch must be installed or upgraded
    pip: List[str] = field(default_factory=list)  # other requirements, for pip
    constraints: Dict[str, str] = field(default_factory=dict)  # shipped distribution -> pinned version
    restart_required: bool = False  # a package to change is already imported in this process
    pytorch_utils: bool = False  # torch goes through the PyTorch Utils extension (with torchvision)

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.pip

    def summary(self) -> str:
        """The one confirmation the user sees."""
        torch = self.torch
        if torch and self.pytorch_utils:
            torch += " and torchvision (through the PyTorch Utils extension, in the build for this computer's GPU)"
        items = ([torch] if torch else []) + self.pip
        text = "BrainSegFounder needs these Python packages: " + ", ".join(items) + "."
        if self.constraints:
            text += (
                " Packages that Slicer ships stay as they are ("
                + ", ".join(f"{k} {v}" for k, v in sorted(self.constraints.items()))
                + ")."
            )
        if self.restart_required:
            text += " Slicer must be restarted afterwards."
        return text

    def constraints_text(self) -> str:
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.constraints.items()))


def plan(
    training: bool = False,
    packages: Sequence[Tuple[str, str, str]] = (),
    version_of=installed_version,
    loaded: Optional[Sequence[str]] = None,
    pytorch_utils: Optional[bool] = None,
) -> InstallPlan:
    """What is missing or too old, and the pins that protect Slicer's own packages.
    ``pytorch_utils``: whether that extension is installed (found on the module path if None)."""
    loaded = set(sys.modules) if loaded is None else set(loaded)
    needed = list(packages or RUNTIME + (TRAINING if training else ()))
    if pytorch_utils is None:
        pytorch_utils = importlib.util.find_spec("PyTorchUtils") is not None
    result = InstallPlan(pytorch_utils=pytorch_utils)
    for module, distribution, requirement in needed:
        version = version_of(distribution)
        if version is not None and _satisfies(version, requirement):
            continue
        if distribution == "torch":
            result.torch = requirement
        else:
            result.pip.append(requirement)
        if version is not None and module in loaded:
            result.restart_required = True  # the old version stays in memory until a restart
    for distribution in SLICER_SHIPPED:
        version = version_of(distribution)
        if version is not None:
            result.constraints[distribution] = version
    # a shipped package that is missing or too old would need replacing: refuse, do not pin around it
    for requirement in list(result.pip):
        name = _distribution(requirement)
        if name in result.constraints:
            raise UserError(
                f"{requirement} needs a newer {name} than this Slicer ships "
                f"({result.constraints[name]}); use a newer Slicer"
            )
    return result


def pip_command(python: str, requirements: Sequence[str], constraints_file: Path) -> List[str]:
    """``python -m pip install`` that cannot touch the pinned packages."""
    return [python, "-m", "pip", "install", "--constraint", str(constraints_file), *requirements]


def pytorch_utils_requirement(torch_requirement: str) -> str:
    """The version range PyTorch Utils' ``installTorch(torchVersionRequirement=...)`` takes
    (``torch>=2.8,<3`` -> ``>=2.8,<3``)."""
    return torch_requirement[len(_distribution(torch_requirement)) :].strip()
