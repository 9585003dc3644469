"""Quick training recipes and runners for the training tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A run of one 64^3 step per epoch with the tiny model: seconds on a 2-core CPU.
QUICK = ["model.size=tiny", "model.roi=[64,64,64]", "train.epochs=1", "train.steps_per_epoch=1",
         "train.warmup_epochs=0", "train.batch_size=1", "data.folds=2", "data.workers=0", "data.cache=none",
         "train.val_every=1", "validation.overlap=0", "model.gradient_checkpointing=false"]


def quick_recipe(data, *overrides, config="brats"):
    from brainsegfounder_training.recipe import load_recipe

    return load_recipe(config, [f"data.path={data}", *QUICK, *overrides])


def run_trainer(recipe, out, resume=False):
    from brainsegfounder_training.trainer import RunFolder, Trainer

    return Trainer(recipe, RunFolder(out), resume, "cpu").fit()

