"""The segment terminology the module ships: the SNOMED types Slicer's own lists lack.

Slicer's General Anatomy list has Necrosis (6574001) and Edema (79654002) but not "Neoplasm,
Primary" (86049000, our enhancing tumour) nor Infarct (55641003, our stroke lesion), so without
this file the terminology selector cannot resolve those segments. Slicer loads it at start-up
(``slicer.modules.terminologies.logic()``); a web front end passes its own terminologies logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Tuple

from brainsegfounder.labels import TERMINOLOGY_CONTEXT

TERMINOLOGY_FILE = (
    Path(__file__).resolve().parents[1] / "Resources" / "SegmentationCategoryTypeModifier-BrainSegFounder.term.json"
)


def load_terminology(terminologies_logic) -> str:
    """Load the shipped terminology into a ``vtkSlicerTerminologiesModuleLogic``; its context name."""
    name = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if name != TERMINOLOGY_CONTEXT:
        raise RuntimeError(f"{TERMINOLOGY_FILE.name} did not load as {TERMINOLOGY_CONTEXT!r} (got {name!r})")
    return name


def loaded_types(terminologies_logic, context: str) -> Iterator[Tuple[str, str]]:
    """(category code, type code) of every type a loaded terminology context holds."""
    import slicer

    category = slicer.vtkSlicerTerminologyCategory()
    kind = slicer.vtkSlicerTerminologyType()
    for c in range(terminologies_logic.GetNumberOfCategoriesInTerminology(context)):
        terminologies_logic.GetNthCategoryInTerminology(context, c, category)
        for t in range(terminologies_logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            terminologies_logic.GetNthTypeInTerminologyCategory(context, category, t, kind)
            yield category.GetCodeValue(), kind.GetCodeValue()
