"""The training pipeline's subcommands of ``brainsegfounder``: pretrain, finetune and evaluate.

Registered through the ``brainsegfounder.commands`` entry point (see pyproject.toml), so the
engine's CLI offers them without importing this package.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from brainsegfounder.atomic import DISK_FULL, check_writable_folder
from brainsegfounder.errors import UserError

from .harness.run_folder import folder_problem, new_run, resume_run

# Recipes (PyYAML), loops (torch, MONAI) are imported by the commands that use them: the engine
# builds its parser with this module for every command, and inference needs neither.


def add_run_arguments(parser, recipes: str, example: str, resumes: str) -> None:
    """The arguments every training run takes: recipe, overrides, run folder, resume, device."""
    parser.add_argument("--config", help=f"recipe: a YAML file or a bundled name ({recipes})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"recipe overrides, e.g. {example}")
    parser.add_argument("--out", help="run folder (default the recipe's output.dir)")
    parser.add_argument("--resume", metavar="RUN", help=f"continue the run in this folder {resumes}")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: one GPU per process)"
    )


def register(subparsers, add_common) -> dict:
    ft = subparsers.add_parser(
        "finetune",
        help="fine-tune a model (BraTS, ATLAS, generic) or learn from saved corrections",
        description="Fine-tune from a recipe. Single process: brainsegfounder finetune ...; several GPUs or "
        "nodes: torchrun --nproc_per_node=N -m brainsegfounder finetune ... (same arguments).",
    )
    add_run_arguments(
        ft,
        "brats, atlas, generic, corrections, demo; default corrections when --base is given",
        "train.epochs=5",
        "from its last finished epoch",
    )
    ft.add_argument("--data", help="datalist.json, BraTS 2021/2023 or ATLAS folder, or saved training cases")
    ft.add_argument("--base", help="model to start from (path or local model name); sets init.checkpoint")
    ft.add_argument("--replay", help="data set mixed into training so a few corrections do not make it forget")
    ft.add_argument("--epochs", type=int, help="sets train.epochs")
    ft.add_argument("--register", metavar="NAME", help="add the best model to the local models as NAME")
    add_common(ft)

    pt = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (BrainSegFounder, MAE, Volume Fusion; stage 1 or 2)",
        description="Self-supervised pretraining: BrainSegFounder's rotation + contrastive + inpainting, masked "
        "autoencoding (mae; swin-mae for the Swin encoder), Volume Fusion, or a combination (--task). Single process: "
        "brainsegfounder pretrain ...; several GPUs or nodes: torchrun --nproc_per_node=N -m "
        "brainsegfounder pretrain ... (same arguments). The run's best.pt is what stage 2 (--init) "
        "and finetune (--base) take.",
    )
    add_run_arguments(pt, "stage1-ukb, stage2-brats, stage2-atlas", "train.steps=1000", "from its last saved step")
    pt.add_argument("--data", help="datalist.json, or a folder: BIDS, UK Biobank-style, BraTS, one folder per subject")
    pt.add_argument("--init", help="stage 2: the stage-1 model to start from (sets init.checkpoint)")
    pt.add_argument("--steps", type=int, help="sets train.steps")
    pt.add_argument(
        "--task",
        help="sets task: brainsegfounder, swin-mae, mae, volume-fusion, brainsegfounder+swin-mae, volume-fusion+mae",
    )
    add_common(pt)

    ev = subparsers.add_parser("evaluate", help="Dice, HD95, volume error and lesion-wise metrics")
    ev.add_argument("--data", required=True, help="the ground truth: datalist.json, BraTS/ATLAS folder or saved cases")
    ev.add_argument("--pred", help="folder of predicted label maps named CASE_ID.nii.gz")
    ev.add_argument("--model", help="segment the cases with this model first")
    ev.add_argument("--run", help="a finetune run: evaluate its held-out cases and plot its learning curves")
    ev.add_argument("--task", help="task preset when neither --model nor --run says (default brats)")
    ev.add_argument("--out", required=True, help="folder for metrics.csv, summary.json and the plots")
    ev.add_argument(
        "--no-lesion-wise", action="store_true", help="skip the lesion-wise metrics (BraTS's and panoptica's)"
    )
    ev.add_argument(
        "--labels",
        choices=("brats2021", "brats2023"),
        help="the BraTS label convention of the truth and the predictions (ET=4 or ET=3), when the data "
        "set does not say it",
    )
    ev.add_argument(
        "--brats-challenge",
        choices=("glioma", "meningioma", "metastases", "pediatric", "sub-saharan", "stroke"),
        help="the lesion-wise settings (dilation, smallest lesion) of this BraTS 2023 challenge; default glioma "
        "for BraTS tasks, stroke (ours: the metastases settings) for lesion tasks",
    )
    ev.add_argument("--device", default="auto")
    ev.add_argument("--overwrite", action="store_true", help="replace output files an earlier run did not write")
    add_common(ev)
    return {
        "pretrain": disk_full_is_user_error(cmd_pretrain),
        "finetune": disk_full_is_user_error(cmd_finetune),
        "evaluate": disk_full_is_user_error(cmd_evaluate),
    }


def disk_full_is_user_error(command):
    """A full disk met where no write of ours names the file (TensorBoard, a data cache, a
    worker process) is still the user's to fix: one line, exit 2."""

    @functools.wraps(command)
    def run(args, report, cancel):
        try:
            return command(args, report, cancel)
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            where = f" {error.filename}" if error.filename else ""
            run = getattr(args, "resume", None) or getattr(args, "out", None)
            training = command is not cmd_evaluate and run and (Path(run) / "recipe.yaml").is_file()
            after = f"continue with --resume {run}" if training else "run again"
            raise UserError(f"cannot write{where} (the disk is full); free space and {after}") from None

    return run


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: str) -> None:
    """The form of --device, before torch is imported (whether the GPU exists is checked later)."""
    if not _DEVICE.match(name or ""):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def check_data_paths(recipe: dict) -> None:
    """Data paths that lead nowhere (missing, a loop, no permission), said before torch and the
    training code are imported: a rejected data set costs a fraction of a second, not a load."""
    from brainsegfounder.paths import check_path

    for key in ("path", "replay"):
        value = recipe["data"].get(key)
        if value:
            check_path(Path(str(value)).expanduser(), f"data.{key}", hint="give a datalist.json or a data set folder")


def check_model_path(name_or_path, flag: str) -> None:
    """An init checkpoint or base model that does not exist, or whose licence must still be
    accepted, said before any data is read."""
    if name_or_path:
        from brainsegfounder.licences import require_accepted
        from brainsegfounder.paths import check_path
        from brainsegfounder.registry import resolve_model

        require_accepted(str(name_or_path))  # a base model's licence binds its fine-tuned versions too
        hint = "give a .pt/.pth file saved by torch.save, or a model name"
        check_path(resolve_model(str(name_or_path)), f"init.checkpoint ({flag})", "file", hint)


def _overrides(args, flags) -> list:
    """The positional KEY=VALUE overrides plus those the named flags stand for."""
    overrides = list(args.overrides)
    for flag, key in flags:
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def finetune_recipe(args) -> dict:
    overrides = _overrides(
        args,
        (
            ("data", "data.path"),
            ("base", "init.checkpoint"),
            ("replay", "data.replay"),
            ("epochs", "train.epochs"),
            ("register", "register"),
        ),
    )
    if args.resume:
        return overrides
    config = args.config or ("corrections" if args.base else None)
    if config is None:
        raise UserError(
            "give a recipe with --config (brats, atlas, generic, corrections, demo or a YAML file), "
            "or --base MODEL to learn from saved corrections"
        )
    from .finetuning.recipe import load_recipe

    return load_recipe(config, overrides)


def cmd_finetune(args, report, cancel) -> dict:
    # the recipe, the run folder and the device first: seconds, before torch and any data
    from .finetuning.recipe import RESUMABLE, load_recipe

    check_device(args.device)
    loaded = finetune_recipe(args)
    if args.resume:
        recipe, run, resuming = resume_run(args.resume, loaded, load_recipe, RESUMABLE, "finetune")
    else:
        recipe, run, resuming = loaded, new_run(loaded, args.out), False
    if not resuming:
        check_model_path(recipe["init"]["checkpoint"], "--base")
    check_data_paths(recipe)

    from brainsegfounder.registry import free_name, register_model

    from .finetuning.trainer import Trainer

    if recipe["register"] and not resuming:
        recipe["model"]["name"] = free_name(str(recipe["register"]))
    summary = Trainer(recipe, run, resuming, args.device, report, cancel).fit()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports and registers
        return {"message": ""}
    best = summary["best"]
    dice = ", ".join(f"{k} {v:.3f}" for k, v in best["dice"].items())
    message = f"best held-out Dice (epoch {best['epoch']}): {dice}; model {summary['best_model']}"
    if summary["before"]:
        before = ", ".join(f"{k} {v:.3f}" for k, v in summary["before"]["dice"].items())
        message += f"\nbefore fine-tuning: {before}"
    if recipe["register"]:
        path = register_model(summary["best_model"], recipe["model"]["name"])
        summary["registered"] = str(path)
        message += f"\nregistered as {path.stem} ({path}); segment with --model {path.stem}"
    return {"output": summary["run"], "summary": summary, "message": message}


def cmd_pretrain(args, report, cancel) -> dict:
    from .pretraining.recipe import PRETRAIN_RESUMABLE, keep_started_rotation_plane, load_pretrain_recipe

    check_device(args.device)
    overrides = _overrides(
        args, (("data", "data.path"), ("init", "init.checkpoint"), ("steps", "train.steps"), ("task", "task"))
    )
    if args.resume:
        recipe, run, resuming = resume_run(args.resume, overrides, load_pretrain_recipe, PRETRAIN_RESUMABLE, "pretrain")
        recipe = keep_started_rotation_plane(recipe, run.path / "recipe.yaml")
    else:
        if not args.config:
            raise UserError(
                "give a recipe with --config (stage1-ukb, stage2-brats, stage2-atlas, mae-resenc-l, swin-mae, "
                "volume-fusion, ... or a YAML file)"
            )
        recipe = load_pretrain_recipe(args.config, overrides)
        run, resuming = new_run(recipe, args.out), False
    if not resuming:
        check_model_path(recipe["init"]["checkpoint"], "--init")
    check_data_paths(recipe)
    cache_dir = recipe["data"]["cache_dir"]
    if recipe["data"]["cache"] == "disk" and cache_dir:
        problem = folder_problem(Path(cache_dir).expanduser())
        if problem:
            raise UserError(f"data.cache_dir: {problem}; give a folder for the cache")
        check_writable_folder(Path(cache_dir).expanduser(), "cache")

    from .pretraining.loop import Pretrainer

    summary = Pretrainer(recipe, run, resuming, args.device, report, cancel).fit()
    if int(os.environ.get("RANK", "0")) != 0:
        return {"message": ""}
    best = summary["best"]
    message = (
        f"stage {summary['stage']}: best validation {summary['selection_label']} {best[summary['selection']]:.4f} "
        f"at step {best['step']} of {summary['steps']} (task {summary['task']}); model {summary['best_model']}"
    )
    if summary["skipped"]:
        message += f"\n{summary['skipped']} unreadable subjects skipped (listed in {run.path}/skipped.jsonl)"
    return {"output": summary["run"], "summary": summary, "message": message}


def cmd_evaluate(args, report, cancel) -> dict:
    check_device(args.device)
    from .finetuning.evaluate import evaluate, format_table

    summary = evaluate(
        args.data,
        args.out,
        pred=args.pred,
        model=args.model,
        task=args.task,
        run=args.run,
        device=args.device,
        lesion_wise=not args.no_lesion_wise,
        labels=args.labels,
        brats_challenge=args.brats_challenge,
        progress=report,
        cancel=cancel,
        overwrite=args.overwrite,
    )
    return {
        "output": str(Path(args.out)),
        "message": f"{summary['cases']} cases\n{format_table(summary)}\n"
        f"wrote {args.out}/metrics.csv, summary.json, boxplots.png",
    }
