"""BrainSegFounder engine: models, checkpoints, image I/O, inference and synthetic data.

This package never imports Slicer: the Slicer module and the training pipeline build on it.
Heavy dependencies (torch, MONAI) are imported by the submodules that need them, so that
``import brainsegfounder`` stays cheap.
"""

__version__ = "0.1.0"
