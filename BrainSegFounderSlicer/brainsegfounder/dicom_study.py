"""A DICOM study in: every series read from its headers, and FLAIR, T1, T1 post-contrast and
T2 told apart without the user naming them.

Evidence, per series (each shown to the user as the reason for a choice):

* **text**: series description, protocol name and sequence name in the spellings of Siemens
  (``t2_tirm_tra_dark-fluid``, ``t1_mprage_sag_p2_iso``), GE (``Ax T2 FLAIR``, ``Sag 3D T1
  BRAVO``, ``+C``), Philips (``T2W_FLAIR``, ``T1W_3D_TFE``, ``+Gd``) and others, in English,
  German (``KM``, ``nativ``), French (``gado``, ``injection``), Spanish and Italian (``contraste``,
  ``mdc``); see :data:`WEIGHTING_WORDS`;
* **physics**: repetition, echo and inversion times (FLAIR: a long TI with a long TR; T1: a short
  TR and TE, or an inversion-prepared gradient echo; T2: a long TR and TE without inversion);
* **contrast agent**: the Contrast/Bolus Agent tags, or post/pre-contrast words.

Localizers, derived images (MPR, MIP, maps), 2D scouts (fewer than 4 slices), series of other
kinds (diffusion, perfusion, SWI, angiography) and series of another body part are excluded,
each with its reason. Among the candidates for one contrast the strongest evidence wins, then
the finer voxels; two candidates equal on both are not guessed between: the user chooses
(``--series t1=UID``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .atomic import STATE_DIR
from .errors import UserError
from .imageio import MIN_SLICES
from .modalities import canonical
from .paths import check_path
from .progress import ProgressCallback, null_progress

CONTRASTS = ("flair", "t1", "t1ce", "t2")
LABELS = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1 post-contrast", "t2": "T2"}
WEIGHTINGS = ("flair", "t1", "t2")
IMAGE_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1."  # every image storage SOP class starts so
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# Each weighting's words in series descriptions, protocol and sequence names (lower case, on
# text whose separators are spaces). Siemens: tirm / dark-fluid (FLAIR), tfl / mprage (T1),
# spc da-fl (3D FLAIR); GE: FLAIR, BRAVO / SPGR (T1), CUBE; Philips: T1W / T2W / TFE / FFE,
# "VISTA"; Canon: FLAIR / T1 / T2 with SE / FSE; German "dunkles Wasser" rarely, "dark fluid".
WEIGHTING_WORDS: Dict[str, Tuple[str, ...]] = {
    "flair": (
        r"flair",
        r"dark ?fluid",
        r"\bda ?fl\b",
        r"\btirm\b",
        r"\bt2 ?f\b",
        r"\bspcir",
        r"\bfluid attenuated",
    ),
    "t1": (
        r"\bt1\b",
        r"\bs?t1w\b",
        r"mp ?rage",
        r"\bbravo\b",
        r"\bf?spgr\b",
        r"\btfl ?3d",
        r"\bvibe\b",
        r"\bt1 ?tfe\b",
        r"\bt1 ?ffe\b",
        r"\bt1c\b",
        r"\bt1n\b",
        r"\bt1ce\b",
        r"\bt1gd\b",
    ),
    "t2": (r"\bt2\b(?! ?(flair|star|\*|fl\b|f\b))", r"\bt2w\b", r"\bt2 ?tse\b", r"\bt2 ?fse\b"),
}
# Series that are none of the four, by their words (diffusion, perfusion, susceptibility, angio,
# T2*, proton density, spectroscopy, calibration).
OTHER_WORDS = (
    r"\bdwi\b",
    r"\bdiff",
    r"\bdti\b",
    r"\bep2d",
    r"\btrace",
    r"\badc\b",
    r"\bperf",
    r"\bpwi\b",
    r"\bdsc\b",
    r"\bdce\b",
    r"\b(pc)?asl\b",
    r"\bswi\b",
    r"\bswan\b",
    r"\bsusc",
    r"\btof\b",
    r"angio",
    r"\bmra\b",
    r"\bbold\b",
    r"\bfmri\b",
    r"\bresting",
    r"\bt2 ?(\*|star)",
    r"\bhemo",
    r"\bpd\b",
    r"\bpdw\b",
    r"spectro",
    r"\bsvs\b",
    r"\bcsi\b",
    r"field ?map",
    r"\bcalibration\b",
    r"\basset cal",
    r"\bsense ref",
    r"\bref ?scan",
)
LOCALIZER_WORDS = (
    r"\bloc\b",
    r"locali[sz]er",
    r"scout",
    r"survey",
    r"3 ?plane",
    r"tri ?pilot",
    r"\bpilot\b",
    r"\baahead",
)
DERIVED_WORDS = (r"\bmpr\b", r"reformat", r"\bmip\b", r"\bminip\b", r"\bsub\b", r"subtract", r"\bmap\b")
POST_WORDS = (
    r"\+ ?c\b",
    r"\bc ?\+",
    r"\+ ?gd",
    r"\+ ?km\b",
    r"\bpost\b",
    r"\bpostcontrast",
    r"\bgd\b",
    r"\bgad",
    r"\bkm\b",
    r"\bmdc\b",
    r"\bkontrast",
    r"contrast",
    r"\binj",
    r"\bce\b",
    r"\bt1c\b",
    r"\bt1ce\b",
    r"\bt1gd\b",
)
PRE_WORDS = (
    r"\bpre\b",
    r"\bprecontrast",
    r"\bnativ",
    r"\bsans\b",
    r"\bsin contraste",
    r"\bsenza\b",
    r"\bohne\b",
    r"\bnon ?contrast",
    r"\bno contrast",
    r"\bt1n\b",
)
NO_AGENT = {"", "none", "no", "nil", "n/a", "na", "0"}
BRAIN_PARTS = {"", "HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK", "CRANIUM", "CEREBRUM"}
NOT_BRAIN_WORDS = (
    r"\bknee",
    r"\bknie",
    r"\bgenou",
    r"\brodilla",
    r"spine",
    r"\blumbar",
    r"\bcervical",
    r"\bthoracic",
    r"\b[lch]ws\b",
    r"\brachis",
    r"\bcolumna",
    r"\babdomen",
    r"\bpelvis",
    r"\bbreast",
    r"\bmamma",
    r"\bprostat",
    r"\bshoulder",
    r"\bhip\b",
    r"\bliver",
    r"\bankle",
    r"\bwrist",
)
# Evidence weights: words name a contrast outright; sequence physics is strong but shared by
# neighbours (a long-TE TSE is T2 or FLAIR without its TI); a sequence name is a vendor's code.
TEXT_WEIGHT, PHYSICS_WEIGHT, AGENT_WEIGHT = 3, 2, 3


def _normal(text: str) -> str:
    """Lower case, separators as single spaces; "+" and "*" kept (``+C``, ``T2*``)."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # camelCase tokens (AAHeadScout)
    return " ".join(re.sub(r"[^a-z0-9+*]+", " ", text.lower()).split())


def _any(patterns: Iterable[str], text: str) -> Optional[str]:
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(0).strip()
    return None


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


@dataclass
class Series:
    """One series of a study, from its headers."""

    uid: str
    number: Optional[int] = None
    description: str = ""
    protocol: str = ""
    sequence: str = ""
    modality: str = ""
    sop_class: str = ""
    manufacturer: str = ""
    body_part: str = ""
    image_type: Tuple[str, ...] = ()
    scanning: Tuple[str, ...] = ()
    acquisition: str = ""
    tr: Optional[float] = None
    te: Optional[float] = None
    ti: Optional[float] = None
    agent: str = ""
    spacing: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    rows: int = 0
    columns: int = 0
    files: List[str] = field(default_factory=list)
    orientations: set = field(default_factory=set)
    echo_times: set = field(default_factory=set)
    frames: int = 0

    @property
    def slices(self) -> int:
        return max(self.frames, len(self.files))

    @property
    def name(self) -> str:
        number = f"series {self.number}" if self.number is not None else "series"
        return f"{number} '{self.description}'" if self.description else number

    @property
    def text(self) -> str:
        return _normal(" ".join((self.description, self.protocol)))

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing)) if all(self.spacing) else float("inf")


@dataclass
class Identity:
    """What a series is: a contrast (``flair``, ``t1``, ``t1ce``, ``t2``) with its evidence score
    and reasons, or excluded with the reason."""

    series: Series
    contrast: Optional[str] = None
    score: int = 0
    reasons: List[str] = field(default_factory=list)
    excluded: Optional[str] = None
    post_contrast: bool = False
    not_brain: Optional[str] = None


def _excluded_kind(series: Series) -> Optional[str]:
    types = {t.upper() for t in series.image_type}
    if series.modality and series.modality != "MR":
        return f"modality {series.modality}, not MR"
    if not series.sop_class.startswith(IMAGE_STORAGE_PREFIX) or not series.rows:
        return "not an image series"
    if "LOCALIZER" in types or _any(LOCALIZER_WORDS, series.text):
        return "localizer"
    if len(series.orientations) > 1:
        return "slices in several orientations (a localizer or several acquisitions)"
    if "DERIVED" in types or "SECONDARY" in types:
        return f"derived image ({'/'.join(series.image_type)})"
    word = _any(DERIVED_WORDS, series.text)
    if word:
        return f"derived image ('{word}' in its description)"
    if series.slices < MIN_SLICES:
        return f"2D: {series.slices} slice(s), not a 3D volume"
    if len(series.echo_times) > 1:
        return f"{len(series.echo_times)} echoes in one series"
    return None


def _physics(series: Series) -> Tuple[Optional[str], str]:
    """The weighting the sequence timing says, and why (TR/TE/TI in ms)."""
    tr, te, ti = series.tr, series.te, series.ti
    timing = ", ".join(f"{k} {v:g} ms" for k, v in (("TR", tr), ("TE", te), ("TI", ti)) if v)
    if tr is None or te is None:
        return None, ""
    epi = "EP" in series.scanning or series.sequence.lower().lstrip("*").startswith(("ep", "epi"))
    if epi:
        return "other", f"echo-planar ({timing})"
    if ti and ti >= 1400 and tr >= 4000:
        return "flair", f"long inversion time ({timing})"
    if ti and 300 <= ti <= 1300 and tr <= 3500 and te <= 15:
        return "t1", f"inversion-prepared gradient echo ({timing})"
    if tr <= 900 and te <= 30:
        return "t1", f"short TR and TE ({timing})"
    if tr >= 2000 and te >= 60 and not (ti and ti >= 300):
        return "t2", f"long TR and TE ({timing})"
    return None, timing


def _sequence_weighting(sequence: str) -> Optional[str]:
    """Siemens sequence-name codes: tir (inversion recovery TSE) with a long TI is FLAIR (judged
    by the physics); tfl / fl3d are T1 gradient echoes; spcir is SPACE FLAIR."""
    code = sequence.lower().lstrip("*")
    if code.startswith(("tfl", "fl3d", "efgre3d", "fspgr")):
        return "t1"
    if code.startswith("spcir"):
        return "flair"
    return None


def identify(series: Series) -> Identity:
    """What ``series`` is, from its headers alone."""
    identity = Identity(series)
    text = series.text
    part = series.body_part.upper().replace(" ", "")
    if part not in BRAIN_PARTS:
        identity.not_brain = f"body part {series.body_part}"
    elif (word := _any(NOT_BRAIN_WORDS, text)) is not None:
        identity.not_brain = f"'{word}' in its description"
    if identity.not_brain:
        identity.excluded = f"not a brain series ({identity.not_brain})"
        return identity
    identity.excluded = _excluded_kind(series)
    if identity.excluded:
        return identity
    other = _any(OTHER_WORDS, text)
    if other:
        identity.excluded = f"not FLAIR, T1 or T2 ('{other}' in its description)"
        return identity
    scores = dict.fromkeys(WEIGHTINGS, 0)
    reasons: Dict[str, List[str]] = {w: [] for w in WEIGHTINGS}
    for weighting in WEIGHTINGS:
        word = _any(WEIGHTING_WORDS[weighting], text)
        if word:
            scores[weighting] += TEXT_WEIGHT
            reasons[weighting].append(f"'{word}' in its description")
    if scores["flair"] and scores["t2"]:  # "T2 FLAIR": the T2 is FLAIR's
        scores["t2"], reasons["t2"] = 0, []
    physics, why = _physics(series)
    if physics == "other":
        identity.excluded = f"not FLAIR, T1 or T2 ({why})"
        return identity
    if physics:
        scores[physics] += PHYSICS_WEIGHT
        reasons[physics].append(why)
    sequence = _sequence_weighting(series.sequence)
    if sequence:
        scores[sequence] += 1
        reasons[sequence].append(f"sequence {series.sequence}")
    best = max(scores.values())
    winners = [w for w in WEIGHTINGS if scores[w] == best]
    if best == 0:
        identity.excluded = f"no evidence of FLAIR, T1 or T2 ({why or 'no timing in its headers'})"
        return identity
    if len(winners) > 1:
        identity.excluded = "conflicting evidence: " + "; ".join(f"{w}: {', '.join(reasons[w])}" for w in winners)
        return identity
    weighting = winners[0]
    identity.score = best
    identity.reasons = reasons[weighting]
    post = 0
    if series.agent.strip().lower() not in NO_AGENT:
        post += AGENT_WEIGHT
        identity.reasons.append(f"contrast agent {series.agent.strip()}")
    pre_word = _any(PRE_WORDS, text)
    post_word = None if pre_word else _any(POST_WORDS, text)
    if pre_word:
        post -= TEXT_WEIGHT
        identity.reasons.append(f"'{pre_word}' (before contrast) in its description")
    elif post_word:
        post += TEXT_WEIGHT
        identity.reasons.append(f"'{post_word}' (contrast) in its description")
    identity.post_contrast = post > 0
    if weighting == "t1":
        identity.contrast = "t1ce" if identity.post_contrast else "t1"
        identity.score += abs(post)
    else:
        identity.contrast = weighting
    return identity


@dataclass
class Study:
    """The series of one study folder, each identified."""

    folder: Path
    series: List[Series]
    identities: List[Identity]

    def find(self, key: str) -> Optional[Series]:
        for series in self.series:
            if key in (series.uid, str(series.number)):
                return series
        return None

    def candidates(self, contrast: str) -> List[Identity]:
        return [i for i in self.identities if i.contrast == contrast and not i.excluded]

    def table(self) -> List[str]:
        """One line per series: what it was taken for, and why."""
        lines = []
        for identity in self.identities:
            series = identity.series
            what = (
                f"excluded: {identity.excluded}"
                if identity.excluded
                else f"{LABELS[identity.contrast]} ({'; '.join(identity.reasons)})"
            )
            lines.append(f"{series.name} [{series.slices} slices, UID {series.uid}]: {what}")
        return lines


def is_dicom_file(path: str) -> bool:
    """A DICOM Part 10 file: 'DICM' after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:  # noqa: PTH123 (os.scandir gives str paths; this is the hot loop)
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def holds_dicom(folder: os.PathLike, limit: int = 200) -> bool:
    """Whether ``folder`` (or a folder below it) holds a DICOM file among its first ``limit`` files."""
    seen = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if is_dicom_file(os.path.join(root, name)):  # noqa: PTH118
                return True
            seen += 1
            if seen >= limit:
                return False
    return False


def _expected_pixel_bytes(ds) -> int:
    """Bytes the uncompressed pixel data of ``ds`` must have (0 when compressed or unknown)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""):
        return 0
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8 * int(ds.SamplesPerPixel or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return 0


def _files(folder: Path) -> List[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != STATE_DIR and not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]  # noqa: PTH118
    return found


def _corrupt(folder: Path, path: str, reason: str) -> UserError:
    rel = os.path.relpath(path, folder)
    return UserError(
        f"study {folder}: {rel} is a damaged DICOM file ({reason[:100]}); export the study again, "
        "or move that file out of the folder"
    )


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def read_study(folder: os.PathLike, progress: ProgressCallback = null_progress) -> Study:
    """Read every DICOM file's header under ``folder`` (recursively; files that are not DICOM
    are ignored) and identify each series. A damaged DICOM file is one :class:`UserError`."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise UserError("reading a DICOM study needs the Python package pydicom: pip install pydicom") from None

    folder = Path(folder)
    check_path(folder, "--study", kind="folder", hint="give the folder of a DICOM study")
    files = [p for p in _files(folder) if is_dicom_file(p)]
    by_uid: Dict[str, Series] = {}
    for i, path in enumerate(files):
        if i % 50 == 0:
            progress("study", i, len(files), "" if i else f"reading {len(files)} DICOM headers in {folder}")
        try:
            with open(path, "rb") as f:  # noqa: PTH123
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                pixels_at = f.tell()  # where the pixel data element starts
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
            raise _corrupt(folder, path, f"{type(error).__name__}: {error}") from None
        except Exception as error:  # pydicom's parser fails on damaged bytes in many ways
            raise _corrupt(folder, path, f"{type(error).__name__}: {error}") from None
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) or _text(
            ds, "SOPClassUID"
        )
        if sop_class == DICOMDIR_CLASS:
            continue
        uid = _text(ds, "SeriesInstanceUID")
        if not uid:
            raise _corrupt(folder, path, "no SeriesInstanceUID")
        expected = _expected_pixel_bytes(ds)
        size = os.path.getsize(path)  # noqa: PTH202
        if expected and size < pixels_at + 8 + expected:  # 8: the element's tag and length, at least
            missing = pixels_at + 8 + expected - size
            raise _corrupt(folder, path, f"its pixel data is cut short by {missing} bytes of {expected}")
        series = by_uid.get(uid)
        if series is None:
            number = ds.get("SeriesNumber", None)
            spacing = [_number(v) or 0.0 for v in (ds.get("PixelSpacing") or [0, 0])][:2]
            thickness = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness")) or 0.0
            series = by_uid[uid] = Series(
                uid=uid,
                number=int(number) if number not in (None, "") else None,
                description=_text(ds, "SeriesDescription"),
                protocol=_text(ds, "ProtocolName"),
                sequence=_text(ds, "SequenceName"),
                modality=_text(ds, "Modality").upper(),
                sop_class=sop_class,
                manufacturer=_text(ds, "Manufacturer"),
                body_part=_text(ds, "BodyPartExamined"),
                image_type=tuple(str(t) for t in (ds.get("ImageType") or ())),
                scanning=tuple(str(t).upper() for t in (ds.get("ScanningSequence") or ())),
                acquisition=_text(ds, "MRAcquisitionType"),
                tr=_number(ds.get("RepetitionTime")),
                te=_number(ds.get("EchoTime")),
                ti=_number(ds.get("InversionTime")),
                agent=" ".join(_text(ds, k) for k in ("ContrastBolusAgent", "ContrastBolusIngredient") if _text(ds, k)),
                spacing=(spacing[1] if len(spacing) > 1 else 0.0, spacing[0] if spacing else 0.0, thickness),
                rows=int(ds.get("Rows", 0) or 0),
                columns=int(ds.get("Columns", 0) or 0),
            )
        series.files.append(path)
        series.frames = max(series.frames, int(ds.get("NumberOfFrames", 1) or 1))
        orientation = ds.get("ImageOrientationPatient")
        if orientation is not None and len(orientation) == 6:
            series.orientations.add(tuple(round(float(v), 3) for v in orientation))
        if _number(ds.get("EchoTime")):
            series.echo_times.add(round(float(ds.EchoTime), 2))
    progress("study", len(files), len(files))
    if not by_uid:
        raise UserError(
            f"--study {folder} holds no DICOM files ({len(_files(folder))} other file(s)); give the folder "
            "the study was exported to (DICOM files, in any subfolders)"
        )
    series = sorted(by_uid.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))
    study = Study(folder, series, [identify(s) for s in series])
    _check_brain(study)
    return study


def _check_brain(study: Study) -> None:
    """A study none of whose MR image series is of the head is not one to segment."""
    images = [i for i in study.identities if i.series.modality in ("MR", "") and i.series.rows]
    if not images:
        kinds = sorted({s.modality or "?" for s in study.series})
        raise UserError(
            f"--study {study.folder} holds no MR image series (modalities: {', '.join(kinds)}); "
            "give the folder of a brain MRI study"
        )
    if all(i.not_brain for i in images):
        raise UserError(
            f"--study {study.folder} is not a brain MRI: {images[0].series.name} is {images[0].not_brain}"
            f"{' (and so are the others)' if len(images) > 1 else ''}; give the folder of a brain MRI study"
        )


@dataclass
class Choice:
    """The series chosen for one contrast, and why."""

    contrast: str
    series: Series
    reason: str
    identity: Optional[Identity] = None

    def to_dict(self) -> dict:
        return {
            "series_uid": self.series.uid,
            "series_number": self.series.number,
            "description": self.series.description,
            "slices": self.series.slices,
            "reason": self.reason,
        }


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in spacing) + " mm"


def choose(study: Study, contrast: str, override: Optional[str] = None) -> Choice:
    """The series for ``contrast``: ``override`` (a SeriesInstanceUID or series number) if given,
    else the candidate with the strongest evidence, then the finer voxels."""
    label = LABELS.get(contrast, contrast)
    if override:
        series = study.find(override)
        if series is None:
            raise UserError(
                f"--series {contrast}={override}: no series with that UID or number in {study.folder}; "
                f"its series: {', '.join(f'{s.number} ({s.uid})' for s in study.series)}"
            )
        identity = next(i for i in study.identities if i.series is series)
        if identity.not_brain:
            raise UserError(
                f"--series {contrast}={override}: {series.name} is not a brain series ({identity.not_brain}); "
                "choose a brain series"
            )
        return Choice(contrast, series, "chosen with --series", identity)
    candidates = sorted(study.candidates(contrast), key=lambda i: (-i.score, i.series.voxel_mm3))
    if not candidates:
        found = [f"{LABELS[i.contrast]} {i.series.name}" for i in study.identities if i.contrast]
        raise UserError(
            f"--study {study.folder} has no {label} series (found: {', '.join(found) or 'none of FLAIR, T1, T2'}; "
            f"{sum(1 for i in study.identities if i.excluded)} series excluded); give one with "
            f"--series {contrast}=SERIES_UID, or --input {contrast}=PATH (brainsegfounder study FOLDER lists them)"
        )
    best = candidates[0]
    reason = "; ".join(best.reasons)
    if len(candidates) > 1:
        second = candidates[1]
        if second.score == best.score and np.isclose(second.series.voxel_mm3, best.series.voxel_mm3, rtol=0.01):
            raise UserError(
                f"--study {study.folder} has two {label} series with equal evidence: {best.series.name} "
                f"(UID {best.series.uid}) and {second.series.name} (UID {second.series.uid}); choose one "
                f"with --series {contrast}=UID"
            )
        if second.score == best.score:
            reason += (
                f"; chosen over {second.series.name} for its finer voxels "
                f"({_mm(best.series.spacing)} against {_mm(second.series.spacing)})"
            )
        else:
            reason += f"; stronger evidence than {second.series.name}"
    return Choice(contrast, best.series, reason, best)


class SeriesSource(os.PathLike):
    """One chosen series as an input path: ``os.fspath`` is the study folder (so no output may
    be written inside it), ``dicom_files`` the series' files for the image reader."""

    def __init__(self, study_folder: os.PathLike, choice: Choice):
        self.folder = Path(study_folder)
        self.choice = choice
        self.dicom_files = list(choice.series.files)

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return f"{self.folder} {self.choice.series.name} (UID {self.choice.series.uid})"

    def __repr__(self) -> str:
        return f"SeriesSource({str(self)!r})"


def parse_overrides(pairs: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """``--series NAME=UID`` pairs -> {canonical modality: UID or series number}."""
    overrides: Dict[str, str] = {}
    for name, key in pairs:
        modality = canonical(name) or name.strip().lower()
        if modality in overrides:
            raise UserError(f"--series {modality} is given twice; give each contrast once")
        overrides[modality] = key.strip()
    return overrides


def study_inputs(
    study: Study,
    modalities: Sequence[str],
    overrides: Sequence[Tuple[str, str]] = (),
    given: Sequence[Tuple[str, os.PathLike]] = (),
    progress: ProgressCallback = null_progress,
) -> Tuple[List[Tuple[str, os.PathLike]], dict]:
    """The inputs a model needs (``modalities``, canonical names) from ``study``: explicit
    ``given`` inputs first, then a series per remaining modality. Returns the inputs and the
    choice for the summary; each choice is also reported through ``progress``."""
    chosen = parse_overrides(overrides)
    unknown = [m for m in chosen if m not in modalities]
    if unknown:
        raise UserError(f"--series {unknown[0]}: this model takes {', '.join(modalities)}")
    given_names = {canonical(n) or n.strip().lower() for n, _ in given}
    inputs: List[Tuple[str, os.PathLike]] = list(given)
    choices: Dict[str, Choice] = {}
    for modality in modalities:
        if modality in given_names:
            continue
        choices[modality] = choose(study, modality, chosen.get(modality))
    used: Dict[str, str] = {}
    for modality, choice in choices.items():
        if choice.series.uid in used:
            raise UserError(
                f"{choice.series.name} was chosen for both {used[choice.series.uid]} and {modality}; "
                f"give the right one with --series {modality}=UID"
            )
        used[choice.series.uid] = modality
        inputs.append((modality, SeriesSource(study.folder, choice)))
        progress("study", 1, 1, f"{modality}: {choice.series.name} (UID {choice.series.uid}): {choice.reason}")
    summary = {
        "folder": str(study.folder),
        "chosen": {m: c.to_dict() for m, c in choices.items()},
        "series": study.table(),
    }
    return inputs, summary
