"""The synthetic case the module registers in Slicer's Sample Data module (shipped in Resources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from brainsegfounder.registry import RESOURCES_DIR

SAMPLE_DIR = RESOURCES_DIR / "SampleData"


def sample_info() -> dict:
    return json.loads((SAMPLE_DIR / "sample.json").read_text())


def sample_data_source() -> Dict[str, object]:
    """Keyword arguments for ``SampleDataLogic.registerCustomSampleDataSource``: the four MRI
    volumes (not the ground truth), as file URIs with their SHA-256."""
    info = sample_info()
    images: List[dict] = [f for f in info["files"] if not f["label"]]
    return {
        "category": "BrainSegFounder",
        "sampleName": info["name"],
        "thumbnailFileName": str(SAMPLE_DIR / info["thumbnail"]),
        "uris": [(SAMPLE_DIR / f["file"]).as_uri() for f in images],
        "fileNames": [f["file"] for f in images],
        "nodeNames": [f["node"] for f in images],
        "checksums": [f"SHA256:{f['sha256']}" for f in images],
        "loadFileTypes": ["VolumeFile"] * len(images),
    }


def truth_file() -> Path:
    return SAMPLE_DIR / next(f["file"] for f in sample_info()["files"] if f["label"])
