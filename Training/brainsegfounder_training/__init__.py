"""The bundled training pipeline of BrainSegFounderSlicer, on top of the ``brainsegfounder`` engine.

harness      what every run shares: run folder, recipes, loop base, optimisation, state, metrics
finetuning   fine-tuning (``brainsegfounder finetune``, learning from saved corrections) and
             evaluation (``brainsegfounder evaluate``)
pretraining  self-supervised pretraining (``brainsegfounder pretrain``)
commands     the subcommands, registered with the engine's CLI

The engine never imports this package: its commands reach the CLI through the
``brainsegfounder.commands`` entry point group. Its version is the engine's.
"""
