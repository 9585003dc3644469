"""The ``brainsegfounder`` command.

Every subcommand reports progress through the protocol of :mod:`brainsegfounder.progress`
and turns a :class:`~brainsegfounder.errors.UserError` into one line on stderr and exit 2
(a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import stat
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional, Sequence, Tuple

from . import __version__
from .checkpoints import init_model, load_checkpoint, resolve_meta
from .console import uncertain_line, volume_table
from .cpu_runtimes import RUNTIMES
from .demo import run_demo
from .errors import Cancelled, UserError
from .fast_mode import MAX_DICE_COST
from .inference import FLIP_COUNTS, InferenceSettings
from .licences import accept_registry_model, accepted_file, is_accepted
from .networks import ARCHITECTURE_SIZES, MERGE_ORDER_NAMES, PRESETS, architecture_name, build_network, count_parameters
from .progress import CancelToken, JsonLinesReporter, TextReporter
from .registry import (
    UNKNOWN_LICENCE,
    local_model_task,
    local_models,
    models_dir,
    register_model,
    registry_models,
    resolve_model,
)
from .resources import compute_devices
from .synth.world import SWITCHES


def _input_pair(text: str) -> Tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected MODALITY=PATH (e.g. flair=case_flair.nii.gz), got {text!r}")
    return name, path


def _roi(text: str) -> Tuple[int, int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ROI must be N or NxNxN, got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"ROI must be N or NxNxN, got {text!r}")
    return values


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("text", "json", "none"),
        default="text",
        help="progress as a text bar on stderr, JSON lines on stdout, or nothing",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _reporter(mode: str):
    if mode == "json":
        return JsonLinesReporter(sys.stdout)
    if mode == "text":
        return TextReporter(sys.stderr)
    return None


def _series_pair(text: str) -> Tuple[str, str]:
    name, sep, key = text.partition("=")
    if not sep or not name or not key:
        raise argparse.ArgumentTypeError(f"expected MODALITY=SERIES_UID or MODALITY=SERIES_NUMBER, got {text!r}")
    return name, key


def _study_inputs(args, settings, report):
    """--study: the study's headers and the outputs checked before the model loads, the series
    chosen for the model's inputs after (the model says which it needs)."""
    from .dicom_study import read_study, study_inputs
    from .outputs import output_files
    from .segment import Segmenter

    if not args.study:
        raise UserError("--series chooses a series of a --study; add --study DICOM_FOLDER")
    study = read_study(args.study, report)
    given = [("study", args.study), *args.inputs]
    output_files(
        args.output,
        args.seg_nrrd,
        args.summary,
        args.preview,
        args.overwrite,
        given,
        args.dicom_seg,
        args.qc,
        args.uncertainty,
    )
    segmenter = Segmenter(args.model, task=args.task, device=args.device, settings=settings)
    inputs, chosen = study_inputs(study, segmenter.meta.modalities, args.series, args.inputs, report)
    return inputs, segmenter, {"study": chosen}


def prep_options(args):
    from .model_space import PrepOptions

    return PrepOptions(
        mode="off" if args.no_preprocess else args.preprocess,
        reference=args.reference,
        registration=not args.skip_registration,
        brain_extraction=not args.skip_brain_extraction,
    )


def cmd_segment(args, report, cancel) -> dict:
    from .segment import segment_files

    if not args.inputs and not args.study:
        raise UserError(
            "no inputs given; add one --input MODALITY=PATH per modality the model needs, or --study DICOM_FOLDER"
        )
    chosen = dict(
        blend=args.blend,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        flips=args.flips,
        memory=args.memory,
        threads=args.threads,
        runtime=args.runtime,
    )
    # explicit window settings win over the fast mode's
    explicit = {
        k: v
        for k, v in (
            ("roi_size", args.roi),
            ("overlap", args.overlap),
            ("precision", None if args.precision == "auto" else args.precision),
        )
        if v is not None
    }
    settings = InferenceSettings(
        **chosen, **explicit, spacing=args.spacing, fast=args.fast, explicit=tuple(sorted(explicit))
    )
    inputs, segmenter, extra = args.inputs, None, None
    if args.study or args.series:
        inputs, segmenter, extra = _study_inputs(args, settings, report)
    summary = segment_files(
        args.model,
        inputs,
        args.output,
        seg_nrrd=args.seg_nrrd,
        summary_path=args.summary,
        preview_path=args.preview,
        overwrite=args.overwrite,
        labels=args.labels,
        device=args.device,
        task=args.task,
        settings=settings,
        progress=report,
        cancel=cancel,
        segmenter=segmenter,
        dicom_seg=args.dicom_seg,
        extra_summary=extra,
        preprocessing=prep_options(args),
        qc_path=args.qc,
        uncertainty_path=args.uncertainty,
    )
    outputs = (args.output, args.seg_nrrd, args.summary, args.preview, args.dicom_seg, args.qc, args.uncertainty)
    written = ", ".join(str(p) for p in outputs if p)
    notes = "".join(f"\nnote: {note}" for note in summary["notes"])
    notes += "".join(f"\nwarning: {warning}" for warning in summary["warnings"])
    table = volume_table(summary["regions"]) + uncertain_line(summary.get("uncertainty"))
    return {"output": str(args.output), "message": f"wrote {written}\n{table}{notes}"}


def cmd_segment_batch(args, report, cancel) -> dict:
    from .batch import run_batch

    settings = InferenceSettings(fast=args.fast, runtime=args.runtime, threads=args.threads)
    return run_batch(
        args.cases,
        args.out,
        args.model,
        resume=args.resume,
        labels=args.labels,
        device=args.device,
        task=args.task,
        settings=settings,
        dicom_seg=args.dicom_seg,
        progress=report,
        cancel=cancel,
        preprocessing=prep_options(args),
        qc=args.qc,
    )


def cmd_study(args, report, cancel) -> dict:
    from .dicom_study import read_study

    study = read_study(args.folder, report)
    lines = [f"{len(study.series)} series in {study.folder}:", *(f"  {line}" for line in study.table())]
    return {"message": "\n".join(lines)}


def cmd_synth(args, report, cancel) -> dict:
    from .synth.cohort import write_cohort
    from .synth.world import world_named

    world = world_named(args.world, on=args.with_switches, off=args.without_switches)
    root = write_cohort(
        args.out,
        kind=args.kind,
        n=args.n,
        seed=args.seed,
        spacing=args.spacing,
        layout=args.layout,
        folds=args.folds,
        start=args.start,
        world=world,
        progress=report,
        cancel=cancel,
    )
    if args.preview:
        from .preview import save_preview_from_files
        from .synth.cohort import LAYOUTS, case_files

        layout = args.layout or LAYOUTS[args.kind][0]
        (root / "previews").mkdir(exist_ok=True)
        for index in range(args.start, args.start + args.n):
            folder, images, label = case_files(layout, index)
            save_preview_from_files(
                [(m, root / p) for m, p in images.items()],
                root / "previews" / f"{folder}.png",
                root / label if label else None,
            )
    return {"output": str(root), "message": f"wrote {args.n} {args.kind} cases and datalist.json to {root}"}


def cmd_models(args, report, cancel) -> dict:
    if args.models_command == "list":
        rows = []  # name, task, source, where its file is, licence
        for entry in registry_models():
            where = entry["path"] or (
                "not on this computer: the Slicer panel downloads it"
                if entry.get("url") and entry.get("sha256")
                else "not on this computer: no published checksum, download it yourself and give its path"
            )
            licence = entry["license"]
            if entry.get("license_needs_acceptance"):
                accepted = is_accepted(entry["id"], licence)
                licence += (
                    " (accepted)" if accepted else f" (accept before first use: models accept-licence {entry['id']})"
                )
            rows.append((entry["id"], entry.get("task", ""), entry["source"], str(where), licence))
        ids = {row[0] for row in rows}
        for name, path in local_models().items():
            # --model NAME finds the registry's model first: this one only by its path
            hidden = "  (a registry model has its name: give the path)" if name in ids else ""
            architecture = local_model_task(path, "architecture")
            source = f"local {architecture}" if architecture else "local"
            licence = local_model_task(path, "license") or UNKNOWN_LICENCE
            rows.append((name, local_model_task(path), source, f"{path}{hidden}", licence))
        width = max([len(row[0]) for row in rows] + [4])
        lines = ["models (segment --model NAME):"]
        lines += [f"  {'name':{width}s}  {'task':6s} {'source':16s} file"]
        for n, t, s, w, licence in rows:
            lines += [f"  {n:{width}s}  {t or '?':6s} {s:16s} {w}", f"  {'':{width}s}  licence: {licence}"]
        lines += [f"local models are kept in {models_dir()} (add one: models register FILE --name NAME)"]
        lines += ["task presets (models init --task, --task for checkpoints without metadata):"]
        lines += [f"  {p.name:8s} inputs {','.join(p.modalities)} -> {p.description}" for p in PRESETS.values()]
        lines += ["architectures and their sizes (models init --architecture A --size S):"]
        lines += [f"  {a:10s} {', '.join(sizes)}" for a, sizes in ARCHITECTURE_SIZES.items()]
        return {"message": "\n".join(lines)}
    if args.models_command in ("accept-licence", "accept-license"):
        entry = accept_registry_model(args.model)
        return {"message": f"accepted for {entry['id']}: {entry['license']} (recorded in {accepted_file()})"}
    if args.models_command == "inspect":
        ckpt = load_checkpoint(resolve_model(args.checkpoint))
        info = {
            "path": str(ckpt.path),
            "format": ckpt.kind,
            "architecture": ckpt.network.summary(),
            "network": ckpt.network.to_dict(),
            "tensors": len(ckpt.state_dict),
        }
        if not ckpt.is_encoder_only:
            info["meta"] = resolve_meta(ckpt, args.task).to_dict()
            info["parameters"] = count_parameters(build_network(ckpt.network))
        print(json.dumps(info, indent=2))
        return {"message": ""}
    if args.models_command == "export-bundle":
        from .bundles import export_bundle

        out = export_bundle(args.model, args.out, args.overwrite)
        return {"output": str(out), "message": f"wrote the MONAI bundle {out} (docs/README.md says how to run it)"}
    if args.models_command == "import-bundle":
        from .bundles import import_bundle

        path = import_bundle(args.bundle, args.name, args.license)
        return {
            "output": str(path),
            "name": path.stem,
            "message": f"imported {args.bundle} as {path.stem} ({path}); segment with --model {path.stem}",
        }
    if args.models_command == "register":
        name = args.name or Path(args.checkpoint).name.split(".")[0]
        path = register_model(args.checkpoint, name, args.task, args.merge_order, args.license)
        return {
            "output": str(path),
            "name": path.stem,
            "message": f"registered {args.checkpoint} as {path.stem} ({path}); segment with --model {path.stem}",
        }
    return {
        "output": str(
            init_model(
                args.output,
                args.size,
                args.task,
                args.seed,
                args.name,
                args.roi,
                args.overwrite,
                architecture_name(args.architecture),
            )
        ),
        "message": f"wrote {args.output}",
    }


def cmd_demo(args, report, cancel) -> dict:
    return run_demo(
        Path(args.out),
        spacing=args.spacing,
        seed=args.seed,
        device=args.device,
        progress=report,
        cancel=cancel,
        overwrite=args.overwrite,
        world=args.world,
    )


def cmd_devices(args, report, cancel) -> dict:
    devices = compute_devices()
    lines = [f"{d['id']:8s} {d['name']}" + (f", {d['memory_gib']} GiB" if d["memory_gib"] else "") for d in devices]
    return {"devices": devices, "message": "\n".join(lines)}


# The built-in subcommands' handlers; other packages add theirs (see _plugin_registrars).
COMMANDS = {
    "segment": cmd_segment,
    "segment-batch": cmd_segment_batch,
    "study": cmd_study,
    "devices": cmd_devices,
    "synth": cmd_synth,
    "models": cmd_models,
    "demo": cmd_demo,
}


PLUGIN_GROUP = "brainsegfounder.commands"
PLUGIN_ENV = "BRAINSEGFOUNDER_COMMANDS"


def _plugin_registrars():
    """Subcommands other packages add (the training pipeline's finetune, evaluate, ...).

    They register through the ``brainsegfounder.commands`` entry point group, so the engine
    never imports them: each entry is a function ``register(subparsers, add_common)``
    returning ``{command: handler}``.
    """
    # Inside Slicer nothing is pip-installed, so no entry points exist: the module names the
    # registrars in BRAINSEGFOUNDER_COMMANDS ("package.module:function", comma-separated).
    targets = [ep.value for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)]
    targets += [t.strip() for t in os.environ.get(PLUGIN_ENV, "").split(",") if t.strip() and t.strip() not in targets]
    registrars, missing = [], []
    for target in targets:
        module, _, attr = target.partition(":")
        try:
            registrars.append(getattr(importlib.import_module(module), attr))
        except ImportError as error:  # a package the install lacks (or a stale install) costs its commands only
            missing.append(f"{module} ({error})")
    return registrars, missing


def _add_preprocessing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preprocess",
        default="auto",
        choices=("auto", "always", "off"),
        help="bring hospital scans into the model's space: co-register the contrasts, resample to the model's "
        "voxel size, strip the skull, as the model's metadata asks. auto (default): skipped for inputs that "
        "look preprocessed (one grid, zero outside a brain: BraTS-like); always: even then; off: as given",
    )
    parser.add_argument("--no-preprocess", action="store_true", help="the same as --preprocess off")
    parser.add_argument(
        "--reference",
        help="the contrast the result is written on (its grid) and the others are registered to "
        "(default the model's first input)",
    )
    parser.add_argument("--skip-registration", action="store_true", help="do not co-register the contrasts")
    parser.add_argument(
        "--skip-brain-extraction", action="store_true", help="do not strip the skull (deepbet) even where needed"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainsegfounder", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"brainsegfounder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one case")
    seg.add_argument("--model", required=True, help="checkpoint path or local model name")
    seg.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=_input_pair,
        default=[],
        metavar="MODALITY=PATH",
        help="an input image (file or DICOM folder), named by modality",
    )
    seg.add_argument(
        "--study",
        help="a DICOM study folder: FLAIR, T1, T1 post-contrast and T2 are found from the series' headers "
        "(the choice and the reason are shown; `brainsegfounder study FOLDER` lists every series)",
    )
    seg.add_argument(
        "--series",
        action="append",
        type=_series_pair,
        default=[],
        metavar="MODALITY=UID",
        help="with --study: use this series (SeriesInstanceUID or series number) for that modality",
    )
    seg.add_argument("--output", required=True, help="label map (.nii.gz, .nii, .nrrd, .mha)")
    seg.add_argument("--seg-nrrd", help="also write a Slicer segmentation (.seg.nrrd)")
    seg.add_argument("--summary", help="also write a JSON summary (volumes, model, timings)")
    seg.add_argument("--preview", help="also write a PNG of a few slices with the labels overlaid")
    seg.add_argument(
        "--dicom-seg",
        help="also write a DICOM Segmentation (.dcm) referencing the reference input's DICOM series",
    )
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (without it, only files an earlier run wrote and nobody "
        "changed since are replaced)",
    )
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    seg.add_argument(
        "--labels",
        default="brats2021",
        choices=("brats2021", "brats2023"),
        help="BraTS label numbers: brats2021 ET=4 (default), brats2023 ET=3",
    )
    seg.add_argument("--task", help="task preset for checkpoints without metadata (brats, atlas)")
    seg.add_argument("--roi", type=_roi, help="sliding-window size, default the model's training ROI")
    seg.add_argument("--overlap", type=float, help="window overlap (default 0.5; with --fast the model's)")
    seg.add_argument("--blend", default="gaussian", choices=("gaussian", "constant"))
    seg.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default 1 on CPU, 2 on GPU)")
    seg.add_argument("--tta", action="store_true", help="average over the 8 mirror flips (8x slower)")
    seg.add_argument(
        "--uncertainty",
        metavar="OUT.nii.gz",
        help="also write an uncertainty map on the reference grid: the variance of the 8 mirror flips' "
        "probabilities (runs --tta's flips); the summary gives each region's uncertain volume",
    )
    seg.add_argument(
        "--flips",
        type=int,
        default=8,
        choices=FLIP_COUNTS,
        help="with --tta or --uncertainty: all 8 mirror flips (default), or 4 (none and each axis alone: half "
        "the time; its uncertainty map found the demo model's errors about as well: AUC 0.94 vs 0.95)",
    )
    seg.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16/fp16 autocast on a GPU, fp32 on the CPU",
    )
    seg.add_argument(
        "--memory",
        default="auto",
        choices=("auto", "normal", "low"),
        help="low: smaller windows, one per batch (for 4-8 GB GPUs or 8 GB laptops); auto picks it "
        "when free memory is short",
    )
    seg.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
    seg.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="what runs the network on the CPU: auto = OpenVINO where installed (about 2.5x PyTorch's fp32 "
        "forward; the network is exported once per model and window size and checked against PyTorch), "
        "else torch; onnxruntime if installed. On a GPU always torch",
    )
    seg.add_argument(
        "--fast",
        action="store_true",
        help="the model's own measured fast mode (`models inspect MODEL` shows its speed-up and the Dice it "
        f"lost: never more than {MAX_DICE_COST} in any region of the cases it was measured on); a model "
        "without one says so",
    )
    seg.add_argument(
        "--spacing",
        default="model",
        choices=("model", "input"),
        help="model: resample the inputs to the voxel size the model was trained at and the labels back "
        "(default); input: run at the input's voxel size",
    )
    _add_preprocessing(seg)
    seg.add_argument("--qc", help="also write a PNG of the preprocessing: co-registered edges, brain mask, result")
    _add_common(seg)

    bat = sub.add_parser("segment-batch", help="segment many cases with one model load (resumable)")
    bat.add_argument("--model", required=True, help="checkpoint path or local model name")
    bat.add_argument(
        "--cases",
        required=True,
        help="a folder of BraTS case folders, a BIDS data set, DICOM study folders, or a CSV "
        "(case_id and one column per modality, or a study column)",
    )
    bat.add_argument("--out", required=True, help="output folder: CASE/ per case, results.csv, results.json, batch.log")
    bat.add_argument("--resume", action="store_true", help="continue a batch in --out; finished cases are kept")
    bat.add_argument("--dicom-seg", action="store_true", help="also write CASE/segmentation.dcm for DICOM cases")
    bat.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    bat.add_argument("--labels", default="brats2021", choices=("brats2021", "brats2023"))
    bat.add_argument("--task", help="task preset for checkpoints without metadata (brats, atlas)")
    bat.add_argument("--fast", action="store_true", help="the model's own measured fast mode (see segment --fast)")
    bat.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
    bat.add_argument("--runtime", default="auto", choices=RUNTIMES, help="see segment --runtime")
    _add_preprocessing(bat)
    bat.add_argument("--qc", action="store_true", help="also write CASE/qc.png, the preprocessing's picture")
    _add_common(bat)

    stu = sub.add_parser("study", help="list a DICOM study's series and what each was identified as")
    stu.add_argument("folder")
    _add_common(stu)

    syn = sub.add_parser("synth", help="write a synthetic cohort on real anatomy")
    syn.add_argument("--out", required=True, help="data set folder")
    syn.add_argument("--kind", default="brats", choices=("brats", "stroke", "healthy"))
    syn.add_argument("--layout", help="brats2021 / brats2023 (brats), atlas (stroke), ukb (healthy)")
    syn.add_argument("--n", type=int, default=5, help="number of cases (default 5)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (default 1)")
    syn.add_argument("--folds", type=int, default=5, help="folds in datalist.json (default 5)")
    syn.add_argument("--start", type=int, default=0, help="index of the first case (to add to a cohort)")
    syn.add_argument("--preview", action="store_true", help="write a PNG of each case into OUT/previews")
    syn.add_argument(
        "--world",
        default="classic",
        choices=("classic", "realistic"),
        help="classic: flat tumours, fixed contrasts (the demo model's world; default); realistic: every "
        "variation below except skull",
    )
    syn.add_argument(
        "--with",
        dest="with_switches",
        action="append",
        default=[],
        metavar="SWITCH",
        help="turn a variation on (repeatable): " + ", ".join(s.replace("_", "-") for s in SWITCHES),
    )
    syn.add_argument(
        "--without", dest="without_switches", action="append", default=[], metavar="SWITCH", help="turn one off"
    )
    _add_common(syn)

    mod = sub.add_parser("models", help="list, inspect or create models")
    mod_sub = mod.add_subparsers(dest="models_command", required=True)
    lst = mod_sub.add_parser("list", help="task presets, sizes and local models")
    _add_common(lst)
    acc = mod_sub.add_parser(
        "accept-licence",
        aliases=["accept-license"],
        help="accept a registry model's licence (asked once, before its first use; `models list` shows it)",
    )
    acc.add_argument("model", help="the registry model's name (models list)")
    _add_common(acc)
    ins = mod_sub.add_parser("inspect", help="print what a checkpoint holds")
    ins.add_argument("checkpoint")
    ins.add_argument("--task", help="task preset for checkpoints without metadata")
    _add_common(ins)
    reg = mod_sub.add_parser("register", help="check a checkpoint and add it to the local models")
    reg.add_argument("checkpoint")
    reg.add_argument("--name", help="local model name (default: the file name)")
    reg.add_argument("--task", help="task preset for checkpoints without metadata (brats, atlas)")
    reg.add_argument("--license", help="the model's licence (default: what its metadata records)")
    reg.add_argument(
        "--merge-order",
        choices=MERGE_ORDER_NAMES,
        help="for a checkpoint without metadata: the SwinUNETR merge order it was trained with "
        "(default monai0.9, as MONAI 0.9-1.4 and BrainSegFounder; monai1.5 for MONAI 1.5 or later)",
    )
    _add_common(reg)
    exp = mod_sub.add_parser("export-bundle", help="write a model as a MONAI bundle (python -m monai.bundle run)")
    exp.add_argument("model", help="a model's name (models list) or a checkpoint file")
    exp.add_argument("--out", required=True, help="the bundle's folder (new or empty)")
    exp.add_argument("--overwrite", action="store_true", help="replace a bundle already in that folder")
    _add_common(exp)
    imp = mod_sub.add_parser(
        "import-bundle", help="add a MONAI bundle (folder or .zip) whose network is a SwinUNETR or ResEnc U-Net"
    )
    imp.add_argument("bundle", help="the bundle's folder or a .zip of it")
    imp.add_argument("--name", help="local model name (default: the bundle's name)")
    imp.add_argument("--license", help="the model's licence (default: what the bundle states)")
    _add_common(imp)
    ini = mod_sub.add_parser("init", help="write a randomly initialised, self-describing model")
    ini.add_argument(
        "--architecture", default="swinunetr", help="swinunetr (default), resenc or pctnet (sizes: models list)"
    )
    ini.add_argument(
        "--size",
        default="tiny",
        help="swinunetr: 62M, 64M, 70M, 277M, small, tiny; resenc: L, M, tiny; pctnet: 45M, tiny",
    )
    ini.add_argument("--task", default="brats", help="brats or atlas")
    ini.add_argument("--output", required=True)
    ini.add_argument("--seed", type=int, default=0)
    ini.add_argument("--name", help="model name (default: the file name)")
    ini.add_argument("--roi", type=_roi, help="ROI stored with the model (default the task's)")
    ini.add_argument("--overwrite", action="store_true", help="replace an existing file of that name")
    _add_common(ini)

    dev = sub.add_parser("devices", help="the CPU and GPUs inference can use (JSON with --progress json)")
    _add_common(dev)

    demo = sub.add_parser("demo", help="segment a synthetic case end to end (built-in default)")
    demo.add_argument("--out", default="demo_output", help="output folder (default ./demo_output)")
    demo.add_argument("--spacing", type=float, default=2.0, help="voxel size of the synthetic case (mm)")
    demo.add_argument("--seed", type=int, default=2026)
    demo.add_argument(
        "--world",
        choices=("classic", "realistic"),
        default="classic",
        help="synthetic world of the case, segmented by the demo model trained on it (default classic)",
    )
    demo.add_argument("--device", default="auto")
    demo.add_argument("--overwrite", action="store_true", help="replace output files an earlier run did not write")
    _add_common(demo)
    handlers = dict(COMMANDS)  # a copy: building a parser leaves the module as it was
    registrars, missing = _plugin_registrars()
    for register in registrars:
        handlers.update(register(sub, _add_common))
    if missing:
        parser.epilog = "commands not loaded: " + "; ".join(missing) + ". Reinstall: pip install -e .[training,web]"
    for command, handler in handlers.items():
        sub.choices[command].set_defaults(handler=handler)
    return parser


# Exit status of a command whose reader went away (`brainsegfounder devices | head -1`), as
# for any tool ended by SIGPIPE: 128 + 13.
BROKEN_PIPE_EXIT = 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader closed stdout: normal on a command line, so quietly.
        _silence_stdout()
        return BROKEN_PIPE_EXIT


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what Python still flushes at exit goes nowhere instead of
    into a second BrokenPipeError with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout is not a file (an in-process caller's)
        pass


def _stdout_gone() -> bool:
    """Whether stdout's reader went away. A BrokenPipeError from elsewhere (a data loader
    worker's pipe, a socket) is a failure to report, not the end of the output."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False  # a terminal or a file has no reader to lose
    if not sys.platform.startswith("linux"):
        return True  # poll's answer for a pipe is Linux's (POLLERR); elsewhere the likely case
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _run(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    reporter = _reporter(args.progress)
    cancel = CancelToken()
    cancel.install_signal_handlers()
    report = reporter or (lambda *a, **k: None)
    try:
        result = args.handler(args, report, cancel)
    except UserError as error:
        if args.debug:
            raise
        _finish(reporter, "error", str(error))
        return error.exit_code
    except Cancelled as error:
        _finish(reporter, "cancelled", str(error) or "cancelled: no partial output was written")
        return error.exit_code
    except Exception as error:
        if isinstance(error, BrokenPipeError) and _stdout_gone():
            raise  # main ends quietly
        if args.debug:
            raise
        if isinstance(error, OSError) and error.filename:
            # A file the machine would not give us (permissions, a vanished disk): the user's to fix.
            _finish(
                reporter,
                "error",
                f"cannot use {error.filename} ({error.strerror}); check the path and its permissions",
            )
            return UserError.exit_code
        # An unexpected failure (an OSError without a file too): still one line unless --debug.
        _finish(
            reporter,
            "error",
            f"internal error: {type(error).__name__}: {error} (run again with --debug and report the traceback)",
        )
        return 1
    message = result.pop("message", "")
    if isinstance(reporter, JsonLinesReporter):
        reporter.finish("ok", message, **result)
    elif message:
        if reporter:
            reporter.finish("ok")
        print(message)
    sys.stdout.flush()  # a closed pipe shows here, inside main, not in Python's exit
    return 0


def _finish(reporter, status: str, message: str) -> None:
    """The final protocol line (JSON mode) and, always, the one line for people on stderr."""
    if isinstance(reporter, JsonLinesReporter):
        try:
            reporter.finish(status, message)
        except BrokenPipeError:  # stdout's reader went away; the person still reads stderr
            _silence_stdout()
    elif reporter:
        reporter.finish(status)
    print(f"error: {message}" if status == "error" else message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
