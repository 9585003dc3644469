"""Which loaded volume goes to which model input: guessed from volume names, checked for duplicates."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from brainsegfounder.errors import UserError
from brainsegfounder.modalities import ALIASES, guess_from_text

LABELS = {"flair": "FLAIR (T2-FLAIR)", "t1ce": "T1ce (T1 post-contrast)", "t1": "T1 (native)", "t2": "T2"}


def modality_label(modality: str) -> str:
    """What the panel shows beside a selector."""
    return LABELS.get(modality, modality.upper())


def scalar_volumes(scene) -> List:
    """Grey-level volumes in the scene (label maps and vector volumes are not MRI inputs)."""
    nodes = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            nodes.append(node)
    return nodes


def _guess(name: str, needed: Sequence[str]) -> Optional[str]:
    modality = guess_from_text(name)
    if modality is None:  # names outside the four BraTS contrasts: the token itself
        lowered = name.lower()
        modality = next((m for m in needed if m not in ALIASES and m in lowered), None)
    return modality if modality in needed else None


def guess_assignment(
    volumes: Sequence, needed: Sequence[str], keep: Optional[Mapping[str, object]] = None
) -> Dict[str, Optional[object]]:
    """Model input -> volume node (or None), from the volumes' names.

    ``keep`` holds choices the user already made; they win over guesses, and a volume is never
    guessed for two inputs (the newest volume wins when two names match one input: a reload).
    """
    result: Dict[str, Optional[object]] = {m: None for m in needed}
    for modality, node in (keep or {}).items():
        if modality in result and node is not None:
            result[modality] = node
    taken = {id(n) for n in result.values() if n is not None}
    for node in reversed(list(volumes)):
        modality = _guess(node.GetName(), needed)
        if modality and result[modality] is None and id(node) not in taken:
            result[modality] = node
            taken.add(id(node))
    return result


def check_assignment(assignment: Mapping[str, Optional[object]]) -> Dict[str, object]:
    """The complete assignment, or one clear error: a missing input or one volume used twice."""
    missing = [modality_label(m) for m, node in assignment.items() if node is None]
    if missing:
        raise UserError(f"choose a volume for {', '.join(missing)}")
    seen: Dict[str, str] = {}
    for modality, node in assignment.items():
        if node.GetID() in seen:
            raise UserError(
                f"volume {node.GetName()!r} is chosen for both {modality_label(seen[node.GetID()])} "
                f"and {modality_label(modality)}; each input needs its own volume"
            )
        seen[node.GetID()] = modality
    return dict(assignment)
