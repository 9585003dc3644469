"""The engine's uncertainty map in the scene: an overlay on the slice views, with a threshold,
and the uncertain regions in the order an annotator should review them (largest first).

A region is a connected component (26-neighbourhood) of the voxels at or above the threshold.
Reviewed voxels are remembered, not component numbers, so moving the threshold (which splits
and merges components) never brings back a region already looked at: a component counts as
reviewed once half of its voxels have been.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from brainsegfounder.errors import UserError
from brainsegfounder.uncertainty import UNCERTAIN_VARIANCE

from .volumes import volume_to_image

COLORS = "vtkMRMLPETProceduralColorNodePET-Heat"  # a procedural table: in every Slicer scene
OVERLAY_OPACITY = 0.5
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def load_uncertainty(scene, path: os.PathLike, reference, name: str, node=None):
    """Read the map into a scalar volume node under ``reference``'s transform, coloured with
    voxels below :data:`UNCERTAIN_VARIANCE` hidden, and show it over every slice view."""
    import slicer

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise UserError(f"could not read the engine's uncertainty map {path}; see the details")
    node.SetName(name)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())  # as the segmentation
    if node.GetDisplayNode() is None:
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        node.SetAndObserveDisplayNodeID(display.GetID())
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(COLORS)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 0.25)  # the variance of probabilities is at most 0.25
    display.SetApplyThreshold(True)
    set_threshold(node, UNCERTAIN_VARIANCE)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetForegroundVolumeID(node.GetID())
        composite.SetForegroundOpacity(OVERLAY_OPACITY)
    return node


def set_threshold(node, threshold: float) -> None:
    """Show only voxels at or above ``threshold`` (a front end's slider)."""
    node.GetDisplayNode().SetThreshold(float(threshold), 1.0)


@dataclass(frozen=True)
class UncertainRegion:
    centre_ras: Tuple[float, float, float]  # in the map's own (local) coordinates
    volume_ml: float
    voxels: int
    remaining: int  # unreviewed regions left after this one


class UncertainRegions:
    """The regions of one uncertainty map, handed out largest first, each once."""

    def __init__(self, node) -> None:
        self.node = node
        self.image = volume_to_image(node, "the uncertainty map")
        self.reviewed = np.zeros(self.image.GetSize()[::-1], dtype=bool)  # (k, j, i)

    def threshold(self) -> float:
        display = self.node.GetDisplayNode()
        return float(display.GetLowerThreshold()) if display is not None else UNCERTAIN_VARIANCE

    def _unreviewed(self, threshold: float):
        """(component image, [label, ...] of unreviewed components, largest first)."""
        components = sitk.RelabelComponent(  # labels 1, 2, ... by decreasing size
            sitk.ConnectedComponent(self.image >= threshold, True)  # fully connected: 26 neighbours
        )
        labels = sitk.GetArrayViewFromImage(components)
        counts = np.bincount(labels.ravel())
        seen = np.bincount(labels[self.reviewed], minlength=len(counts))
        return components, [n for n in range(1, len(counts)) if seen[n] * 2 < counts[n]]

    def next(self, threshold: Optional[float] = None) -> Optional[UncertainRegion]:
        """The largest region not reviewed yet (now marked reviewed), or None when all are."""
        threshold = self.threshold() if threshold is None else threshold
        components, left = self._unreviewed(threshold)
        if not left:
            return None
        label = left[0]
        self.reviewed |= sitk.GetArrayViewFromImage(components) == label
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(components)
        centre = np.array(shape.GetCentroid(label)) * _LPS_TO_RAS
        voxels = shape.GetNumberOfPixels(label)
        ml = voxels * float(np.prod(self.image.GetSpacing())) / 1000
        return UncertainRegion(tuple(float(v) for v in centre), round(ml, 4), int(voxels), len(left) - 1)


def jump_to(scene, region: UncertainRegion, node) -> Tuple[float, float, float]:
    """Centre every slice view on ``region`` (in world coordinates: the map's transform applied)."""
    import slicer

    point = [0.0, 0.0, 0.0]
    node.TransformPointToWorld(list(region.centre_ras), point)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *point, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return tuple(point)
