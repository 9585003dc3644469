"""Cases of a synthetic world with variation switched on (:mod:`.world`): the anatomy, lesions,
contrasts and acquisition of each case drawn from independent random streams."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from .acquisition import biased, misregistered, noise_sigma, rician, thick_slice_plans, thick_slices
from .ageing import age_anatomy
from .contrast import Layer, compose, draw_means
from .glioma import add_glioma
from .head import head_layers
from .lesions import add_stroke
from .subject import make_subject
from .world import World, stream

REFERENCE = "t1"  # the contrast the others (and the labels) are registered to


def make_varied_case(kind: str, seed: int, index: int, spacing: float, world: World):
    from .cohort import GRIDS, MODALITIES, SynthCase

    def streams(*names: str) -> np.random.Generator:
        return stream(seed, index, kind, *names)

    subject = make_subject(streams("anatomy"), GRIDS[kind], spacing, fast=True)
    if world.atrophy:
        age_anatomy(streams("atrophy"), subject)
    regions: Dict[str, np.ndarray] = {}
    layers: List[Layer] = []
    if kind == "brats":
        glioma = add_glioma(lambda name: streams("tumour", name), subject, world)
        labels = glioma.labels
        regions = {"necrosis": labels.necrosis, "enhancing": labels.enhancing, "edema": labels.edema}
        layers = glioma.layers
    elif kind == "stroke":
        regions = {"infarct": add_stroke(streams("stroke"), subject)}
        layers = [Layer("infarct", regions["infarct"])]
    # Everything below happens in the brain's box (a third of a BraTS grid), or on the whole
    # grid when the head is drawn around the brain.
    box = tuple(slice(None) for _ in range(3)) if world.skull else subject.brain_box(margin=round(4 / spacing))
    view = subject.cropped(box)
    layers = [
        Layer(a.tissue, a.fraction[box], None if a.modulation is None else a.modulation[box], a.weight) for a in layers
    ]
    if world.skull:
        fractions, _ = head_layers(streams("skull"), view)
        layers += [Layer(tissue, fraction, weight=0.0) for tissue, fraction in fractions.items()]
    texture = view.texture(streams("texture"))
    gain = streams("gain").uniform(400, 3000)
    modalities = MODALITIES[kind]
    plans = thick_slice_plans(streams("thick slices"), modalities, spacing) if world.thick_slices else {}
    grid = view.grid
    center = grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()])
    images = {}
    for modality in modalities:
        means = draw_means(streams("contrast", modality), modality, world.contrast)
        image = compose(view, means, layers, texture)
        image = biased(streams("bias", modality), image, world.bias)
        if world.misregistration and modality != REFERENCE:
            image = misregistered(streams("misregistration", modality), image, grid, center)
        noise = streams("noise", modality)
        sigma = noise_sigma(noise, means["wm"], world.noise)
        if modality in plans:
            image, _ = thick_slices(noise, image, *plans[modality], sigma)
        else:
            image = rician(noise, image, sigma)
        if not world.skull:
            image = np.where(view.brain, image, 0.0)  # brain-extracted, one mask for all contrasts
        array = np.zeros(subject.brain.shape, np.int16)
        array[box] = np.round(image * gain)
        images[modality] = sitk.GetImageFromArray(array)
        images[modality].CopyInformation(subject.grid)
    return SynthCase(images=images, regions=regions)
