"""MRML scenes as Slicer makes them, for the Logic's tests (slicer-core's real classes)."""

from __future__ import annotations

import slicer

DEMO = "registry:brats-synthetic-demo"


def new_scene():
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()  # as in Slicer: module logics find each other through it
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    app.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app)
    volumes.SetMRMLScene(scene)
    scene._keep = (volumes, colors, app)  # the logics must outlive this function
    return scene, volumes


def load_case(inputs, names=None):
    """A scene holding the case's volumes, read by Slicer's volumes logic, named like BraTS 2023 files."""
    scene, volumes = new_scene()
    names = names or {"flair": "case7-t2f", "t1ce": "case7-t1c", "t1": "case7-t1n", "t2": "case7-t2w"}
    nodes = {m: volumes.AddArchetypeVolume(str(p), names[m]) for m, p in inputs}
    return scene, nodes
