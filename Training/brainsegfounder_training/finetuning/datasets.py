"""Finding training cases: a MONAI datalist, a BraTS 2021 / 2023 or ATLAS folder, or saved cases.

Every source becomes a list of :class:`Case` records (inputs in the model's channel order,
label, fold if the source has folds, label convention). Paths are checked to stay inside
the data set root, and :func:`check_cases` reads every header (and label) before training
starts, so a bad case is one clear error at minute one, not a crash at hour ten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from brainsegfounder.cases import is_case_root, list_cases
from brainsegfounder.errors import UserError
from brainsegfounder.geometry import same_grid
from brainsegfounder.labels import LabelSchema
from brainsegfounder.modalities import canonical
from brainsegfounder.names import plain_name
from brainsegfounder.progress import ProgressCallback, null_progress

from ..harness.data import BRATS_TAGS, data_path, inside


@dataclass(frozen=True)
class Case:
    case_id: str
    images: Dict[str, str]  # modality -> absolute path, in the model's channel order
    label: str
    fold: Optional[int] = None
    convention: str = "auto"  # brats2021 / brats2023 / auto (decided from the label values)
    source: str = "data"  # data or replay
    extra: dict = field(default_factory=dict, compare=False)

    def image_list(self) -> List[str]:
        return list(self.images.values())


def _order(names: Sequence[str], modalities: Sequence[str], where: str) -> List[int]:
    """Positions of ``modalities`` among the data set's input ``names``."""
    normal = [canonical(n) or n.lower() for n in names]
    missing = [m for m in modalities if m not in normal]
    if missing:
        raise UserError(
            f"{where} has inputs {', '.join(names)} but the model needs {', '.join(modalities)}; "
            f"{', '.join(missing)} missing: choose a recipe or base model for these inputs"
        )
    return [normal.index(m) for m in modalities]


def _case_id_of(label: str) -> str:
    """The case folder of a label path, or the file name's stem for flat data sets."""
    parts = Path(label).parts
    return parts[0] if len(parts) > 1 else parts[0].split(".")[0]


def from_datalist(path: Path, modalities: Sequence[str]) -> List[Case]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not UTF-8 (an image given as --data) or not JSON
        reason = str(error).splitlines()[0][:100]
        raise UserError(f"cannot read the datalist {path} ({reason}); give a MONAI datalist JSON file") from None
    entries = data.get("training") if isinstance(data, dict) else None
    if not entries:
        raise UserError(f"datalist {path} has no 'training' entries; it lists no cases")
    root = path.parent
    described = (data.get("description") or {}).get("modalities")
    layout = (data.get("description") or {}).get("layout", "")
    synthetic = bool((data.get("description") or {}).get("synthetic"))  # brainsegfounder synth cohorts
    convention = "brats2023" if layout == "brats2023" else "brats2021" if layout == "brats2021" else "auto"
    cases = []
    for i, entry in enumerate(entries):
        images = entry.get("image")
        images = [images] if isinstance(images, str) else images
        if not images or "label" not in entry:
            raise UserError(f"datalist {path} entry {i} needs 'image' and 'label'")
        if described:
            order = _order(described, modalities, f"datalist {path}")
        elif len(images) == len(modalities):
            order = list(range(len(modalities)))  # no names given: the recipe's order is assumed
        else:
            raise UserError(
                f"datalist {path} entry {i} has {len(images)} images, the model needs "
                f"{len(modalities)} ({', '.join(modalities)})"
            )
        if len(images) <= max(order):
            raise UserError(f"datalist {path} entry {i} has {len(images)} images, fewer than its description lists")
        label = inside(root, entry["label"])
        # a case id names files (evaluate's predictions): never a path out of its folder
        case_id = plain_name(
            str(entry.get("case_id") or _case_id_of(entry["label"])), f"datalist {path} entry {i} case id"
        )
        fold = entry.get("fold")
        paths = {m: inside(root, images[j]) for m, j in zip(modalities, order, strict=True)}
        extra = {"synthetic": True} if synthetic else {}
        cases.append(Case(case_id, paths, label, int(fold) if fold is not None else None, convention, extra=extra))
    return cases


def from_brats_folder(root: Path, modalities: Sequence[str]) -> List[Case]:
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name
        for convention, tags in BRATS_TAGS.items():
            sep = "_" if convention == "brats2021" else "-"
            label = folder / f"{name}{sep}seg.nii.gz"
            if label.is_file():
                missing = [m for m in modalities if m not in tags]
                if missing:
                    raise UserError(
                        f"{root} is a BraTS folder (flair, t1ce, t1, t2); the model needs {', '.join(modalities)}"
                    )
                images = {m: str(folder / f"{name}{sep}{tags[m]}.nii.gz") for m in modalities}
                cases.append(Case(name, images, str(label), None, convention))
                break
    return cases


def from_atlas_folder(root: Path, modalities: Sequence[str]) -> List[Case]:
    if list(modalities) != ["t1"]:
        return []
    cases = []
    for t1 in sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii.gz")):
        label = Path(str(t1).replace("_T1w.nii.gz", "_label-L_desc-T1lesion_mask.nii.gz"))
        if label.is_file():
            cases.append(Case(t1.name.split("_")[0], {"t1": str(t1)}, str(label), None, "auto"))
    return cases


def from_saved_cases(root: Path, modalities: Sequence[str]) -> List[Case]:
    cases = []
    for saved in list_cases(root):
        info = saved.info
        order = _order(info["modalities"], modalities, f"saved case {saved.case_id}")
        names = [info["images"][info["modalities"][j]] for j in order]
        cases.append(
            Case(
                saved.case_id,
                {m: str(saved.folder / n) for m, n in zip(modalities, names, strict=True)},
                str(saved.folder / info["label"]),
                None,
                info.get("label_convention", "auto"),
                extra={"revision": saved.revision, "content_sha256": info.get("content_sha256")},
            )
        )
    return cases


def discover(path: os.PathLike, modalities: Sequence[str]) -> List[Case]:
    """All labelled cases of a data source, in a stable order."""
    path = data_path(
        path,
        "no training data given; set data.path (or --data) to a datalist.json, a BraTS or "
        "ATLAS folder, or a folder of saved training cases",
    )
    if path.is_file():
        cases = from_datalist(path, modalities)
    elif is_case_root(path):
        cases = from_saved_cases(path, modalities)
    elif (path / "datalist.json").is_file():
        cases = from_datalist(path / "datalist.json", modalities)
    else:
        cases = from_brats_folder(path, modalities) or from_atlas_folder(path, modalities)
    if not cases:
        raise UserError(
            f"no labelled cases found in {path}; expected a datalist.json, BraTS 2021/2023 case "
            "folders, an ATLAS BIDS tree or saved training cases"
        )
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"case id {dup} appears twice in {path}; case ids must be unique")
    return cases


def _info(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UserError(f"cannot read {path} as an image; fix or remove this case") from None
    return reader


def _grid(reader: sitk.ImageFileReader) -> sitk.Image:
    image = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def decide_convention(case: Case, values: np.ndarray, schema: LabelSchema) -> str:
    """brats2021 (ET=4) or brats2023 (ET=3) from the label values when the source does not say."""
    if schema.name != "brats_regions":
        return "brats2021"
    if case.convention != "auto":
        return case.convention
    return "brats2023" if 3 in values and 4 not in values else "brats2021"


def check_cases(
    cases: Sequence[Case], schema: LabelSchema, convention: str = "auto", progress: ProgressCallback = null_progress
) -> List[Case]:
    """Every file exists and reads, inputs are 3D, the label shares the first input's grid and
    holds only the schema's values. Returns the cases with their label convention decided."""
    checked = []
    for i, case in enumerate(cases):
        progress("check_data", i, len(cases), case.case_id)
        for modality, path in [*list(case.images.items()), ("label", case.label)]:
            if not Path(path).is_file():
                raise UserError(f"case {case.case_id}: {modality} file {path} is missing; fix the data set")
        first = _info(case.image_list()[0])
        if first.GetDimension() != 3:
            raise UserError(f"case {case.case_id}: {case.image_list()[0]} is not a 3D volume")
        label_image = sitk.ReadImage(case.label)
        if not same_grid(label_image, _grid(first)):
            raise UserError(
                f"case {case.case_id}: the label {Path(case.label).name} is not on the grid of "
                f"{Path(case.image_list()[0]).name} (size {label_image.GetSize()} vs "
                f"{first.GetSize()}); resample the label onto the image grid"
            )
        values = np.unique(sitk.GetArrayViewFromImage(label_image))
        case_convention = convention if convention != "auto" else decide_convention(case, values, schema)
        bad = sorted(set(values.tolist()) - set(schema.valid_values(case_convention)))
        if bad:
            raise UserError(
                f"case {case.case_id}: label values {bad} are outside the schema {schema.name} "
                f"(allowed {list(schema.valid_values(case_convention))}); fix the label map or "
                "choose the matching label convention"
            )
        for path in case.image_list()[1:]:
            _info(path)
        checked.append(replace(case, convention=case_convention))
    progress("check_data", len(cases), len(cases))
    return checked
