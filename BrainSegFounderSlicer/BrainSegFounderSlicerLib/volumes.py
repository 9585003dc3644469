"""Volume nodes -> SimpleITK images and files, in physical space.

Slicer keeps volumes in RAS, ITK and the files we write in LPS: the conversion flips the first
two axes of the origin and direction. A volume under a transform is exported in its own
(local) coordinates; callers put results under the same transform, so they line up exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from brainsegfounder.errors import UserError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _direction_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def volume_to_image(node, what: Optional[str] = None) -> sitk.Image:
    """A scalar volume node as a SimpleITK image (LPS), voxels copied."""
    what = what or f"volume {node.GetName()!r}"
    image_data = node.GetImageData() if node is not None else None
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise UserError(f"{what} has no image data; load the volume again")
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise UserError(
            f"{what} has {scalars.GetNumberOfComponents()} components per voxel; choose a "
            "scalar (grey-level) MRI volume"
        )
    dims = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1]).copy()  # (k, j, i)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in node.GetSpacing()))
    origin = np.array(node.GetOrigin(), dtype=float)
    image.SetOrigin(tuple(_RAS_TO_LPS @ origin))
    image.SetDirection(tuple((_RAS_TO_LPS @ _direction_ras(node)).ravel()))
    return image


def image_to_volume(scene, image: sitk.Image, name: str):
    """A SimpleITK image (LPS) as a new scalar volume node (RAS) of ``scene``, voxels copied."""
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))  # (k, j, i)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    image_data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*image.GetSpacing())
    node.SetOrigin(*(_RAS_TO_LPS @ np.array(image.GetOrigin())))
    direction = _RAS_TO_LPS @ np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c])
    node.SetIJKToRASDirectionMatrix(matrix)
    node.SetAndObserveImageData(image_data)
    node.CreateDefaultDisplayNodes()
    return node


def write_volume(node, path: os.PathLike) -> Path:
    """Write a scalar volume to a file the engine reads (NRRD keeps NaN, which NIfTI would not)."""
    path = Path(path)
    sitk.WriteImage(volume_to_image(node), str(path), useCompression=True)
    return path


def same_parent_transform(nodes) -> None:
    """Inputs must share one parent transform (or none): they are exported in local coordinates."""
    transforms = {n.GetTransformNodeID() for n in nodes}
    if len(transforms) > 1:
        names = ", ".join(n.GetName() for n in nodes)
        raise UserError(
            f"the input volumes ({names}) are under different transforms; harden them first "
            "(Data module: right-click the transform > Harden transform)"
        )
