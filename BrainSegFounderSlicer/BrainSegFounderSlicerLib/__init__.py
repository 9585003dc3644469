"""Slicer-side helpers of the BrainSegFounderSlicer module.

Each helper takes an explicit ``vtkMRMLScene`` (never ``slicer.mrmlScene``) and needs only the
MRML classes, so the whole workflow runs and is tested outside the Slicer application on the
PyPI package ``slicer-core``. Image maths stays in the engine (``brainsegfounder``); these
modules only move data between the scene, files and background processes.
"""
