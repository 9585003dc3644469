"""Modality names: the canonical ones models use, and the aliases people and data sets use."""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

from .errors import UserError

# canonical -> aliases (BraTS 2023 file tags, DICOM-ish and common spellings), lower case
ALIASES: Dict[str, Tuple[str, ...]] = {
    "flair": ("flair", "t2f", "t2flair", "t2_flair", "t2-flair"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1_post", "t1-post", "post", "t1_gd", "t1wce", "ce"),
    "t1": ("t1", "t1n", "t1w", "t1native", "mprage"),
    "t2": ("t2", "t2w"),
}
_LOOKUP = {alias: name for name, aliases in ALIASES.items() for alias in aliases}


def canonical(name: str) -> Optional[str]:
    """The canonical modality for a name or alias (case-insensitive), else None."""
    return _LOOKUP.get(name.strip().lower())


def guess_from_text(text: str) -> Optional[str]:
    """Best modality guess for a volume or file name such as 'BraTS-GLI-00001-000-t2f'."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]
    for token in reversed(tokens):  # the tag is usually last
        if token in _LOOKUP:
            return _LOOKUP[token]
    return None


def match_inputs(given: Sequence[Tuple[str, str]], needed: Sequence[str]) -> Dict[str, str]:
    """Map ``(name, path)`` pairs onto the model's modalities; one clear error per problem."""
    needed_text = ", ".join(needed)
    result: Dict[str, str] = {}
    for name, path in given:
        # Names outside the four BraTS contrasts (e.g. dwi, adc) are taken as written.
        modality = canonical(name) or (name.strip().lower() if name.strip().lower() in needed else None)
        if modality is None:
            raise UserError(
                f"unknown modality {name!r}; this model takes {needed_text} (e.g. --input {needed[0]}=PATH)"
            )
        if modality not in needed:
            raise UserError(f"this model does not take {modality!r} (given as {name!r}); it takes {needed_text}")
        if modality in result:
            raise UserError(f"modality {modality} is given twice; give each of {needed_text} once")
        result[modality] = path
    missing = [m for m in needed if m not in result]
    if missing:
        raise UserError(
            f"missing input for {', '.join(missing)}; this model needs " + " ".join(f"--input {m}=PATH" for m in needed)
        )
    return {m: result[m] for m in needed}
