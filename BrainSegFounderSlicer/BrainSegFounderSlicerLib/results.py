"""Engine results into the scene (segmentation, region volumes) and back out (label maps).

The engine writes a ``.seg.nrrd`` with named, coloured, SNOMED-coded segments on the
reference input's grid; Slicer's own segmentation reader loads it, so names, colours and
terminology arrive exactly as Slicer stores them. The label value of each segment is kept in a
segment tag, so a corrected segmentation can be written back as the same label map.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from brainsegfounder.errors import UserError
from brainsegfounder.labels import region_volumes

from .volumes import volume_to_image

LABEL_VALUE_TAG = "BrainSegFounder.LabelValue"


def load_segmentation(scene, seg_nrrd: os.PathLike, reference, name: str, node=None):
    """Read a .seg.nrrd into a segmentation node shown on ``reference``'s geometry.

    ``node`` (an existing segmentation node) is emptied and reused, so re-running Segment
    replaces the previous result instead of piling up nodes.
    """
    import slicer

    _ensure_surface_rule()  # before the node exists: a segmentation copies the rules when made
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        node.GetSegmentation().RemoveAllSegments()
        node.SetName(name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg_nrrd))
    if not storage.ReadData(node):
        raise UserError(f"could not read the engine's segmentation {seg_nrrd}; see the details")
    segmentation = node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment.SetTag(LABEL_VALUE_TAG, str(segment.GetLabelValue()))
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())  # inputs went out in local coordinates
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def segment_terminology(segment) -> str:
    """The segment's terminology entry (Slicer 5.10+ has a getter; 5.8 keeps it in a tag)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def _ensure_surface_rule() -> None:
    """Slicer's Segmentations module registers its converter rules at start-up; without the
    application (slicer-core) nobody has, and surfaces could not be made."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def show_in_3d(node) -> None:
    """Closed surfaces for the 3D view (2D views show the labelmap as it is)."""
    if not node.CreateClosedSurfaceRepresentation():
        raise UserError(f"could not make the 3D surfaces of {node.GetName()!r}")
    display = node.GetDisplayNode()
    if display is not None:
        display.SetVisibility3D(True)


def segment_label_values(node, known: Optional[Mapping[int, str]] = None) -> List[Tuple[str, int]]:
    """(segment id, label value) for every segment, in label order.

    The value comes from the segment's tag (set when the engine's result was loaded); a segment
    the user added is matched by name against ``known`` (value -> segment name) or refused.
    """
    segmentation = node.GetSegmentation()
    by_name = {name.lower(): value for value, name in (known or {}).items()}
    pairs = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        if segment.GetTag(LABEL_VALUE_TAG, tag) and str(tag).isdigit():
            value = int(str(tag))
        elif segment.GetName().lower() in by_name:
            value = by_name[segment.GetName().lower()]
        else:
            names = ", ".join(repr(n) for n in (known or {}).values()) or "the model's segment names"
            raise UserError(
                f"segment {segment.GetName()!r} has no label value; rename it to one of {names} "
                "or delete it before saving"
            )
        pairs.append((segment_id, value))
    values = [v for _, v in pairs]
    if len(set(values)) != len(values):
        raise UserError("two segments have the same label value; merge them or delete one before saving")
    return sorted(pairs, key=lambda p: p[1])


def segment_mask(scene, node, segment_id: str, reference) -> np.ndarray:
    """One segment as a boolean (k, j, i) array on the reference volume's grid."""
    import slicer

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__brainsegfounder_export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            node, ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not ok:
            raise UserError(f"could not export segment {segment_id!r} onto {reference.GetName()!r}")
        data = labelmap.GetImageData()
        return numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(data.GetDimensions()[::-1]) > 0
    finally:
        scene.RemoveNode(labelmap)


def label_image(scene, node, reference, known: Optional[Mapping[int, str]] = None) -> sitk.Image:
    """The segmentation as a label map (uint8) on exactly the reference volume's grid.

    Where segments overlap, the higher label value wins (for BraTS: enhancing over necrosis
    over edema, as the engine writes them).
    """
    grid = volume_to_image(reference)
    labels = np.zeros(sitk.GetArrayViewFromImage(grid).shape, dtype=np.uint8)
    for segment_id, value in segment_label_values(node, known):
        labels[segment_mask(scene, node, segment_id, reference)] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    return image


def region_rows(labels: sitk.Image, label_schema, convention: str = "brats2021") -> List[Tuple[str, str, float]]:
    """(region, label value, volume in mL) per written label and per predicted region (BraTS TC, WT)."""
    return [
        (info["name"] if "label" in info else f"{key} (region)", str(info.get("label", "")), info["volume_ml"])
        for key, info in region_volumes(labels, label_schema, convention).items()
    ]


def fill_volume_table(table_node, rows: Sequence[Tuple[str, str, float]]) -> None:
    """Region / labels / volume (mL) rows into a table node (shown in the panel and saved with the scene)."""
    table = table_node.GetTable()
    table.Initialize()
    columns = [
        ("Region", vtk.vtkStringArray()),
        ("Labels", vtk.vtkStringArray()),
        ("Volume (mL)", vtk.vtkDoubleArray()),
    ]
    for title, column in columns:
        column.SetName(title)
        table.AddColumn(column)
    table.SetNumberOfRows(len(rows))
    for r, (name, values, volume) in enumerate(rows):
        table.SetValue(r, 0, vtk.vtkVariant(name))
        table.SetValue(r, 1, vtk.vtkVariant(values))
        table.SetValue(r, 2, vtk.vtkVariant(round(volume, 2)))
    table.Modified()
    table_node.Modified()
