"""A DICOM study into the scene: the series a model needs, picked from their headers by the
engine (``brainsegfounder.dicom_study``: description spellings of several vendors, sequence
names, TR / TE / TI, contrast agent; localizers and derived series left out), each loaded as a
volume named after its contrast and series, with the reason it was chosen. The panel's "Load
DICOM study" and the web app's DICOM upload both come here; the user can still reassign.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import SimpleITK as sitk

from brainsegfounder.dicom_study import Choice, read_study, study_inputs
from brainsegfounder.imageio import read_volume

from .assignment import modality_label
from .training import case_id_from
from .volumes import image_to_volume


@dataclass
class LoadedStudy:
    folder: Path
    nodes: Dict[str, object] = field(default_factory=dict)  # model input -> its volume node
    reasons: Dict[str, str] = field(default_factory=dict)  # model input -> "series 5 (...): why"

    @property
    def case_id(self) -> str:
        """The training case id a correction of this study is saved under: the folder's name."""
        return case_id_from(self.folder.name)

    def lines(self) -> List[str]:
        """One line per input for the user: the series chosen and why."""
        return [f"{modality_label(m)}: {reason}" for m, reason in self.reasons.items()]


def read_study_images(folder: os.PathLike, modalities: Sequence[str]) -> Dict[str, Tuple[Choice, sitk.Image]]:
    """The series of the study in ``folder`` for each of ``modalities``, chosen and read: every
    refusal (no FLAIR, two T1 with equal evidence, a corrupt file) comes here, before the scene changes."""
    inputs, _ = study_inputs(read_study(folder), modalities)
    return {modality: (source.choice, read_volume(source, modality)) for modality, source in inputs}


def add_study(scene, folder: os.PathLike, images: Dict[str, Tuple[Choice, sitk.Image]]) -> LoadedStudy:
    """The chosen series as new volumes of ``scene``, named after contrast and series."""
    loaded = LoadedStudy(Path(folder))
    for modality, (choice, image) in images.items():
        loaded.nodes[modality] = image_to_volume(scene, image, f"{modality} - {choice.series.name}")
        loaded.reasons[modality] = f"{choice.series.name}: {choice.reason}"
    return loaded
