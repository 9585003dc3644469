"""The bundled training pipeline of BrainSegFounderSlicer, on top of the ``brainsegfounder`` engine.

Fine-tuning (``brainsegfounder finetune``), evaluation (``brainsegfounder evaluate``) and
learning from saved corrections. The engine never imports this package: its commands reach
the CLI through the ``brainsegfounder.commands`` entry point group.
"""

__version__ = "0.1.0"
