"""The segmentation pipeline: files in, label map / seg.nrrd / summary out.

read & check inputs -> into the model's space (model_space.py: co-register, resample once to the
model's voxel size, strip the skull, where the model needs it and the inputs are not so already;
``--no-preprocess``: resample onto the reference modality's grid) -> orient as the network was
trained -> crop to the brain -> z-score -> sliding window -> probabilities back onto the reference
grid -> threshold -> labels -> warnings -> write all outputs atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from . import case_warnings, fast_mode, resources
from . import dicom_seg as dicom_seg_request
from .checkpoints import (
    LoadedCheckpoint,
    ModelMeta,
    check_checkpoint_file,
    load_checkpoint,
    network_from_checkpoint,
    resolve_meta,
)
from .cpu_runtimes import CpuRuntime, resolve_runtime
from .errors import UserError
from .geometry import (
    WARN_COVERAGE,
    check_coverage,
    grid_at_spacing,
    needs_model_spacing,
    orientation_code,
    percent,
    reorient,
    resample_linear,
    resample_with_coverage,
    same_grid,
    voxel_volume_ml,
)
from .imageio import check_images, read_volume
from .inference import InferenceSettings, predict_probabilities, resolve_device
from .labels import et_label, region_volumes, schema
from .licences import require_accepted
from .modalities import match_inputs
from .model_space import Prepared, PrepOptions, prepare
from .outputs import output_files, write_outputs
from .preprocess import BrainBox, normalize
from .progress import CancelToken, ProgressCallback, null_progress
from .registry import resolve_model
from .uncertainty import UNCERTAIN_VARIANCE, UncertaintyMap, region_uncertainty


def load_inputs(
    paths: Dict[str, str], progress: ProgressCallback = null_progress, native: bool = False, reference: str = ""
):
    """Read inputs in model order; all land on the reference's (default the first one's) grid, or
    stay on their own with ``native`` (their coverage of the reference is checked either way).
    Returns (images, resampled, notes): notes are one-line strings for the user (an input that
    covers part of the brain)."""
    resampled, notes = {}, []
    names = list(paths)
    reference = reference or names[0]
    check_images((name, paths[name]) for name in names)  # every header before any voxel
    order = [reference] + [n for n in names if n != reference]
    read = {}
    for i, name in enumerate(order):
        progress("read", i, len(names), f"reading {name}")
        image = read_volume(paths[name], label=f"input {name}")
        if read:
            label = f"the reference {reference}"
            if native:
                covered = check_coverage(image, read[reference], f"input {name}", reference_label=label)
                resampled[name] = not same_grid(image, read[reference])  # resampled later, onto the model grid
            else:
                image, resampled[name], covered = resample_with_coverage(
                    image, read[reference], f"input {name}", reference_label=label
                )
            if covered < WARN_COVERAGE:
                notes.append(
                    f"input {name} covers {percent(covered)} of {label}'s brain; the rest is segmented without it"
                )
        else:
            resampled[name] = False
        read[name] = image
    progress("read", len(names), len(names))
    return [read[n] for n in names], resampled, notes


def to_network_array(images: Sequence[sitk.Image], orientation: str) -> np.ndarray:
    """(C, i, j, k) float32 with the index axes oriented as the network was trained."""
    return _arrays([reorient(image, orientation) for image in images])


def _arrays(oriented: Sequence[sitk.Image]) -> np.ndarray:
    return np.stack([sitk.GetArrayFromImage(im).transpose(2, 1, 0) for im in oriented]).astype(np.float32)


def _onto(array: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Channels (C, i, j, k) on ``grid`` resampled (linear) onto ``target``'s grid."""
    out = []
    for channel in array:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel.transpose(2, 1, 0)))
        image.CopyInformation(grid)
        out.append(sitk.GetArrayFromImage(resample_linear(image, target)).transpose(2, 1, 0))
    return np.stack(out)


def from_network_labels(labels: np.ndarray, reference: sitk.Image, orientation: str) -> sitk.Image:
    """Label array (i, j, k) in network orientation -> image on exactly ``reference``'s grid."""
    oriented_ref = reorient(reference, orientation)
    image = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    image.CopyInformation(oriented_ref)
    image = reorient(image, orientation_code(reference))
    if image.GetSize() != reference.GetSize():
        raise AssertionError("reorientation changed the grid size")
    image.CopyInformation(reference)  # identical up to float round-off after the axis permutation
    return image


class Segmenter:
    """A loaded model, ready to segment volumes. Reusable across cases."""

    def __init__(
        self, model: str, task: Optional[str] = None, device: str = "auto", settings: Optional[InferenceSettings] = None
    ):
        require_accepted(model)  # a model whose licence must be agreed to first
        self.settings = settings or InferenceSettings()
        self.settings.validate()
        self.device = resolve_device(device)
        self.checkpoint: LoadedCheckpoint = load_checkpoint(resolve_model(model))
        # Scaled-dot-product attention: 22 vs 34 s per 128^3 window of the 62M model on a CPU,
        # 3.7 vs 4.5 GiB peak; the low-memory forward takes the peak to 3.2 GiB (low_memory_swin.py).
        from .low_memory_swin import LowMemorySwinUNETR  # torch: imported once the inputs have passed their checks

        network = network_from_checkpoint(self.checkpoint, use_flash_attention=True).eval()
        self.network = LowMemorySwinUNETR(network) if self.checkpoint.network.NAME == "SwinUNETR" else network
        self.meta: ModelMeta = resolve_meta(self.checkpoint, task)
        if self.settings.fast:
            self.settings = fast_mode.apply(self.settings, self.meta)
        self.checkpoint.network.check_roi(self.roi, "window")
        runtime = resolve_runtime(self.settings.runtime, self.device)
        self.cpu_runtime = None
        if runtime != "torch":
            self.cpu_runtime = CpuRuntime(
                lambda: network_from_checkpoint(self.checkpoint, use_flash_attention=True).eval(),
                self.checkpoint.path,
                self.checkpoint.network.in_channels,
                runtime,
                threads=self.settings.threads or resources.usable_cpus(),
                network_config=self.checkpoint.network.to_dict(),
            )
        self.schema = schema(self.meta.label_schema)
        if self.schema.num_channels != self.checkpoint.network.out_channels:
            raise UserError(
                f"model {self.meta.name} has {self.checkpoint.network.out_channels} outputs but its "
                f"label schema {self.schema.name} needs {self.schema.num_channels}"
            )

    @property
    def roi(self) -> Tuple[int, int, int]:
        return tuple(self.settings.roi_size or self.meta.roi_size)

    def model_grid(self, oriented_reference: sitk.Image) -> Optional[sitk.Image]:
        """The grid at the model's training voxel size over the reference's extent, or None
        where the reference already has that voxel size (or the model does not record one, or
        the input's own voxel size was asked for)."""
        spacing = self.meta.spacing_mm
        if self.settings.spacing != "model" or not needs_model_spacing(oriented_reference, spacing):
            return None
        return grid_at_spacing(oriented_reference, spacing)

    def probabilities(
        self, volume: np.ndarray, progress: ProgressCallback = null_progress, cancel: Optional[CancelToken] = None
    ):
        """Region probabilities (C, i, j, k) for a network-oriented volume, plus run facts."""
        box = BrainBox.of(volume)
        cropped = normalize(box.crop(volume), self.meta.normalization)
        probs, report = predict_probabilities(
            self.network, cropped, self.roi, self.settings, self.device, progress, cancel, self.cpu_runtime
        )
        if report.variance is not None:
            report.variance = box.paste(report.variance)
        return box.paste(probs), box, report

    def label_image(
        self,
        images: Sequence[sitk.Image],
        convention: str = "brats2021",
        progress: ProgressCallback = null_progress,
        cancel: Optional[CancelToken] = None,
    ):
        """Label map on exactly the first image's grid, with the brain box and run facts.

        The network runs at the model's training voxel size: inputs on another are resampled
        to it (linear) and the probabilities back onto the reference grid (linear) before
        they are thresholded, so the label map has the reference's resolution."""
        oriented = [reorient(image, self.meta.orientation) for image in images]
        volume = _arrays(oriented)
        grid = self.model_grid(oriented[0])
        if grid is None:
            at_model, grid = volume, oriented[0]
        else:
            progress("resample", 0, 1, f"resampling to the model's {_mm(grid.GetSpacing())} voxels")
            at_model = _arrays([resample_linear(image, grid) for image in oriented])
        # Voxels where every input is zero (outside a skull-stripped brain) hold no tissue.
        return self._labels(at_model, grid, images[0], np.any(volume != 0, axis=0), convention, progress, cancel)

    def label_prepared(
        self,
        prepared: Prepared,
        reference: sitk.Image,
        convention: str = "brats2021",
        progress: ProgressCallback = null_progress,
        cancel: Optional[CancelToken] = None,
    ):
        """Label map on exactly ``reference``'s grid from a case in the model's space (model_space.py);
        the probabilities are resampled onto the reference grid before they are thresholded."""
        oriented = reorient(reference, self.meta.orientation)
        tissue = prepared.tissue
        if not same_grid(prepared.grid, oriented):
            tissue = _onto(tissue[None].astype(np.float32), prepared.grid, oriented)[0] >= 0.5
        return self._labels(prepared.volume, prepared.grid, reference, tissue, convention, progress, cancel)

    def _labels(self, at_model, grid, reference, tissue, convention, progress, cancel):
        """Probabilities of ``at_model`` (on ``grid``) back on the reference, thresholded inside ``tissue``."""
        probs, box, report = self.probabilities(at_model, progress, cancel)
        oriented = reorient(reference, self.meta.orientation)
        if not same_grid(grid, oriented):
            probs = _onto(probs, grid, oriented)
            if report.variance is not None:
                report.variance = _onto(report.variance, grid, oriented)
        report.spacing_mm = tuple(round(float(v), 4) for v in grid.GetSpacing())
        regions = probs > self.settings.threshold
        labelled = np.any(regions, axis=0)
        outside = np.count_nonzero(labelled & ~tissue)
        report.outside_tissue_fraction = float(outside) / max(1, np.count_nonzero(labelled))
        labels = self.schema.regions_to_labels(regions & tissue, convention)
        if report.variance is not None:
            report.uncertainty = self._uncertainty_map(report.variance, tissue, reference)
            report.variance = None  # the map holds what is needed
        return from_network_labels(labels, reference, self.meta.orientation), box, report

    def _uncertainty_map(self, variance: np.ndarray, tissue: np.ndarray, reference: sitk.Image) -> UncertaintyMap:
        array, volumes = region_uncertainty(
            variance, tissue, self.schema.channels, voxel_volume_ml(reference), UNCERTAIN_VARIANCE
        )
        image = from_network_labels(array, reference, self.meta.orientation)
        return UncertaintyMap(image, volumes, flips=self.settings.flips)


def _mm(spacing) -> str:
    return "x".join(f"{float(v):g}" for v in spacing) + " mm"


def segment_files(
    model: str,
    inputs: Sequence[Tuple[str, str]],
    output: os.PathLike,
    seg_nrrd: Optional[os.PathLike] = None,
    summary_path: Optional[os.PathLike] = None,
    labels: str = "brats2021",
    device: str = "auto",
    task: Optional[str] = None,
    settings: Optional[InferenceSettings] = None,
    progress: ProgressCallback = null_progress,
    cancel: Optional[CancelToken] = None,
    segmenter: Optional[Segmenter] = None,
    preview_path: Optional[os.PathLike] = None,
    overwrite: bool = False,
    dicom_seg: Optional[os.PathLike] = None,
    extra_summary: Optional[dict] = None,
    preprocessing: Optional[PrepOptions] = None,
    qc_path: Optional[os.PathLike] = None,
    uncertainty_path: Optional[os.PathLike] = None,
) -> dict:
    """Segment one case from files; returns the summary (also written to ``summary_path``).
    Arguments and outputs are checked before the model loads; all outputs are written together.
    ``dicom_seg`` writes a DICOM SEG on the reference input's series (see dicom_seg.py);
    ``extra_summary`` adds entries to the summary (e.g. the series a study gave);
    ``preprocessing`` says how the inputs are brought into the model's space (model_space.py),
    ``qc_path`` writes a PNG of what that did; ``uncertainty_path`` writes the uncertainty map
    (uncertainty.py: the flips of test-time augmentation are run, and the label map is their
    average's) and adds its volumes to the summary."""
    cancel = cancel or CancelToken()
    prep = preprocessing or PrepOptions()
    timings = {}
    start = t0 = time.perf_counter()
    et_label(labels)  # validates the convention before any work
    (settings or InferenceSettings()).validate()
    files = output_files(
        output, seg_nrrd, summary_path, preview_path, overwrite, inputs, dicom_seg, qc_path, uncertainty_path
    )
    dicom_seg_request.check_request(dicom_seg, inputs)
    if segmenter is None:
        require_accepted(model)  # before any input is read: nothing else can help
    check_images(inputs)  # headers only: a bad input costs no model load and no voxel allocation
    if segmenter is None:
        check_checkpoint_file(resolve_model(model))  # likewise, before torch is imported
    progress("load_model", 0, 1, "loading model")
    segmenter = segmenter or Segmenter(model, task=task, device=device, settings=settings)
    segmenter.settings.uncertainty = uncertainty_path is not None
    timings["load_model_s"] = time.perf_counter() - t0
    paths = match_inputs(inputs, segmenter.meta.modalities)
    prep.validate(segmenter.meta.modalities)
    reference_name = prep.reference or next(iter(paths))
    native = prep.mode != "off"
    progress("load_model", 1, 1)
    cancel.check()

    t0 = time.perf_counter()
    images, resampled, notes = load_inputs(paths, progress, native=native, reference=reference_name)
    reference = images[list(paths).index(reference_name)]
    timings["read_inputs_s"] = time.perf_counter() - t0
    seg_sources = None
    if dicom_seg is not None:  # the SEG references the reference input's series, on its grid
        seg_sources = dicom_seg_request.source_files(paths[reference_name], f"the reference input {reference_name}")
        dicom_seg_request.check_grid(seg_sources, reference)
    cancel.check()

    prepared = None
    if native:
        t0 = time.perf_counter()
        prepared = prepare(
            dict(zip(paths, images, strict=True)),
            segmenter.meta,
            prep,
            segmenter.settings.spacing,
            progress,
            cancel,
        )
        timings.update(prepared.timings)
        timings["preprocess_s"] = time.perf_counter() - t0
        cancel.check()

    t0 = time.perf_counter()
    if prepared is not None:
        label_image, box, report = segmenter.label_prepared(prepared, reference, labels, progress, cancel)
    else:
        label_image, box, report = segmenter.label_image(images, labels, progress, cancel)
    timings["inference_s"] = time.perf_counter() - t0
    cancel.check()
    warnings = _warnings(prepared, images, list(paths), label_image, report)

    summary = {
        "model": {
            "name": segmenter.meta.name,
            "version": segmenter.meta.version,
            "task": segmenter.meta.task,
            "checkpoint": str(segmenter.checkpoint.path),
            "format": segmenter.checkpoint.kind,
        },
        "inputs": {name: {"path": str(p), "resampled_to_reference": resampled[name]} for name, p in paths.items()},
        "reference": {
            "modality": reference_name,
            "size": list(reference.GetSize()),
            "spacing_mm": list(reference.GetSpacing()),
            "origin_mm": list(reference.GetOrigin()),
            "direction": list(reference.GetDirection()),
        },
        "label_convention": labels if segmenter.schema.name == "brats_regions" else "lesion=1",
        "regions": region_volumes(label_image, segmenter.schema, labels),
        "inference": {
            **asdict(segmenter.settings),
            "roi_size": list(report.roi),
            "device": report.device,
            "windows": report.windows,
            "sw_batch_size": report.sw_batch_size,
            "precision": report.precision,
            "memory_mode": report.memory_mode,
            "threads": report.threads,
            "model_s": round(report.model_s, 3),
            "brain_box_fraction": round(box.fraction, 3),
            "model_spacing_mm": list(segmenter.meta.spacing_mm) if segmenter.meta.spacing_mm else None,
            "run_at_spacing_mm": list(report.spacing_mm),
            "runtime": report.runtime,
        },
        "preprocessing": prepared.report if prepared is not None else {"mode": "off"},
        "warnings": warnings,
        "notes": notes + report.notes,
        "timings_s": timings,
        **(extra_summary or {}),
    }
    if report.uncertainty is not None:
        summary["uncertainty"] = {"map": str(uncertainty_path), **report.uncertainty.summary()}
    if segmenter.settings.fast:
        summary["notes"].append(f"fast mode: {fast_mode.describe(segmenter.meta.fast)}")
    caution = segmenter.meta.caution()  # shown on every run of a demo, synthetic-only or untrained model
    if caution:
        summary["notes"] = [caution, *summary["notes"]]
    # The summary file holds the timings up to writing; the returned one adds the write.
    timings["total_before_write_s"] = time.perf_counter() - start
    timings.update({k: round(v, 3) for k, v in timings.items()})
    progress("write", 0, 1, f"writing {output}")
    t0 = time.perf_counter()
    segments = segmenter.schema.label_values(labels)
    if native and preview_path is not None:  # the preview shows every input on the reference's grid
        images = [resample_linear(image, reference) for image in images]
    write_outputs(
        files,
        label_image,
        segments,
        summary,
        dict(zip(paths, images, strict=True)),
        qc=qc_path
        and (lambda path: _draw_qc(path, prepared, images, list(paths), reference_name, label_image, segmenter)),
        dicom_seg=seg_sources
        and (
            lambda path: dicom_seg_request.write_dicom_seg(
                label_image, segments, seg_sources, path, segmenter.meta.name, str(segmenter.meta.version)
            )
        ),
        uncertainty=report.uncertainty and report.uncertainty.image,
    )
    timings["write_s"] = round(time.perf_counter() - t0, 3)
    progress("write", 1, 1)
    return summary


def _warnings(prepared: Optional[Prepared], images, names, label_image: sitk.Image, report) -> list:
    """The case's warnings: from preprocessing (or the inputs as given), then the result's."""
    if prepared is not None:
        out = list(prepared.warnings)
        brain_ml = prepared.report.get("brain_extraction", {}).get("brain_ml")
    else:
        out = case_warnings.input_warnings(dict(zip(names, images, strict=True)))
        brain_ml = None
    segmented_ml = (
        float(np.count_nonzero(sitk.GetArrayViewFromImage(label_image)))
        * float(np.prod(label_image.GetSpacing()))
        / 1000.0
    )
    return out + case_warnings.result_warnings(segmented_ml, brain_ml, report.outside_tissue_fraction, "segmentation")


def _draw_qc(path, prepared: Optional[Prepared], images, names, reference_name, label_image, segmenter) -> None:
    from .qc_picture import draw_qc

    if prepared is None:  # --no-preprocess: the inputs as the network saw them, on the reference grid
        orientation = segmenter.meta.orientation
        grid = reorient(images[names.index(reference_name)], orientation)
        draw_qc(path, to_network_array(images, orientation), names, reference_name, grid, None, label_image)
    else:
        draw_qc(path, prepared.volume, names, reference_name, prepared.grid, prepared.brain_mask, label_image)
