"""Reading data both loops share: paths kept inside their data set, cache keys, and inputs
read exactly as ``segment`` reads them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterable

from brainsegfounder.errors import UserError
from brainsegfounder.preprocess import BrainBox, normalize

# BraTS file tags per naming convention: 2021 (BraTS2021_00000_flair) and 2023 (BraTS-GLI-..-t2f).
BRATS_TAGS = {
    "brats2021": {"flair": "flair", "t1ce": "t1ce", "t1": "t1", "t2": "t2"},
    "brats2023": {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"},
}


def data_path(path, missing: str) -> Path:
    """The data set path a recipe gives, which must exist; ``missing`` says what to give when none is."""
    if path is None:
        raise UserError(missing)
    path = Path(path).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise UserError(f"data set {path} is a symbolic link that leads nowhere (a loop or a missing target)")
        raise UserError(f"data set {path} does not exist; check the path")
    return path


def inside(root: Path, rel: str) -> str:
    """``root / rel`` as an absolute path, refusing entries that leave the data set folder."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserError(f"data set entry {rel!r} points outside its folder {root}; keep the images inside it")
    return str(path)


def files_key(paths: Iterable[str], salt: str = "") -> bytes:
    """A disk-cache key: the files and their modification times (a changed file is read again)."""
    text = "|".join(f"{p}:{Path(p).stat().st_mtime_ns}" for p in paths)
    return hashlib.sha256((salt + text).encode()).hexdigest().encode()


def read_network_volume(images: Dict[str, str], orientation: str, crop_to_brain: bool = True):
    """Inputs as ``segment`` sees them: resampled onto the first input's grid, in the network's
    orientation, cropped to the brain and z-scored over it. Returns (volume (C,i,j,k) float32,
    the brain box, the first input image)."""
    # the engine's segment module brings torch: only reading needs it, not finding data sets
    from brainsegfounder.segment import load_inputs, to_network_array

    loaded, _, _ = load_inputs(dict(images))
    volume = to_network_array(loaded, orientation)
    box = BrainBox.of(volume) if crop_to_brain else BrainBox((0, 0, 0), volume.shape[1:], volume.shape[1:])
    return normalize(box.crop(volume)), box, loaded[0]
