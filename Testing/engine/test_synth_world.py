"""The synthetic world's variation switches: determinism, labels that match the images, and each
switch changing what it is about (and, for the scanner's switches, nothing else)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from brainsegfounder.errors import UserError
from brainsegfounder.synth.acquisition import thick_slices
from brainsegfounder.synth.cohort import make_case
from brainsegfounder.synth.world import REALISTIC, SWITCHES, world_named

from helpers import run_cli

SPACING = 4.0  # mm: a BraTS grid of 60 x 60 x 39, about a second a case

# switch -> (kind and case that shows it, whether it may change the label map)
SHOWN_BY = {
    "texture": ("brats", 0, True),
    "multifocal": ("brats", 1, True),
    "sites": ("brats", 0, True),
    "infiltration": ("brats", 0, True),
    "contrast": ("healthy", 0, False),
    "bias": ("healthy", 0, False),
    "noise": ("healthy", 0, False),
    "thick_slices": ("healthy", 0, False),
    "misregistration": ("healthy", 0, False),
    "atrophy": ("healthy", 0, False),
    "skull": ("healthy", 0, False),
}


def arrays(case):
    return {m: sitk.GetArrayFromImage(image) for m, image in case.images.items()}


@pytest.fixture(scope="module")
def baselines():
    """The realistic world's case of each kind and index the switch table uses, made once."""
    cache = {}

    def get(kind, index):
        if (kind, index) not in cache:
            cache[kind, index] = make_case(kind, seed=3, index=index, spacing=SPACING, world=REALISTIC)
        return cache[kind, index]

    return get


def test_the_switch_table_covers_every_switch():
    assert set(SHOWN_BY) == set(SWITCHES)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_changes_the_images(switch, baselines):
    kind, index, labels_may_change = SHOWN_BY[switch]
    base = baselines(kind, index)
    flipped = REALISTIC.switched(off=[switch]) if getattr(REALISTIC, switch) else REALISTIC.switched(on=[switch])
    other = make_case(kind, seed=3, index=index, spacing=SPACING, world=flipped)
    a, b = arrays(base), arrays(other)
    changed = [m for m in a if not np.array_equal(a[m], b[m])]
    assert changed, f"{switch} changed no image"
    if not labels_may_change:  # independent random streams: the scanner leaves the anatomy alone
        for name in base.regions:
            assert np.array_equal(base.regions[name], other.regions[name])
    else:
        assert any(not np.array_equal(base.regions[n], other.regions[n]) for n in base.regions)


def test_misregistration_moves_every_contrast_but_the_reference(baselines):
    base = baselines("brats", 0)
    still = make_case("brats", seed=3, index=0, spacing=SPACING, world=REALISTIC.switched(off=["misregistration"]))
    a, b = arrays(base), arrays(still)
    assert np.array_equal(a["t1"], b["t1"])  # labels and T1 stay registered
    assert all(not np.array_equal(a[m], b[m]) for m in ("flair", "t1ce", "t2"))


def test_a_realistic_case_is_the_same_for_the_same_seed_and_differs_for_another(baselines):
    again = make_case("brats", seed=3, index=0, spacing=SPACING, world=REALISTIC)
    other = make_case("brats", seed=4, index=0, spacing=SPACING, world=REALISTIC)
    first = arrays(baselines("brats", 0))
    assert all(np.array_equal(first[m], v) for m, v in arrays(again).items())
    assert all(np.array_equal(baselines("brats", 0).regions[n], again.regions[n]) for n in again.regions)
    assert not np.array_equal(first["flair"], arrays(other)["flair"])


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_realistic_labels_agree_with_the_images(index):
    """Measured on the images (3 mm, every scanner effect on): the enhancing tumour is brighter
    than what surrounds it on T1ce (and than the normal brain where the rim is not lost to
    partial volume), necrosis darker than the rim, edema brighter than the normal brain on FLAIR."""
    case = make_case("brats", seed=5, index=index, spacing=3.0, world=REALISTIC)
    images = {m: a.astype(float) for m, a in arrays(case).items()}
    et, ncr, ed = (case.regions[n] for n in ("enhancing", "necrosis", "edema"))
    normal = (images["t1"] > 0) & ~ndimage.binary_dilation(et | ncr | ed, iterations=2)
    assert ed.sum() > 20
    assert images["flair"][ed].mean() > 1.25 * images["flair"][normal].mean()
    assert et.sum() > 10
    around = ndimage.binary_dilation(et, iterations=2) & ~et & (images["t1ce"] > 0)
    assert images["t1ce"][et].mean() > 1.1 * images["t1ce"][around].mean()
    if et.sum() >= 100:
        assert images["t1ce"][et].mean() > 1.2 * images["t1ce"][normal].mean()
    assert images["t1ce"][ncr].mean() < images["t1ce"][et].mean()  # non-enhancing core counts as necrosis


def test_thick_slices_blur_across_the_slices_only():
    """A 5 mm acquisition of a 1 mm volume of white noise: neighbours across the slices are
    strongly alike, neighbours within a slice no more than before."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((60, 40, 40)).astype(np.float32) + 10
    out, positions = thick_slices(rng, image, axis=0, step=5, sigma=0.0)
    assert np.all(np.diff(positions) == 5)
    across = np.corrcoef(out[:-1].ravel(), out[1:].ravel())[0, 1]
    within = np.corrcoef(out[:, :-1].ravel(), out[:, 1:].ravel())[0, 1]
    assert across > 0.7
    assert abs(within) < 0.1


def test_skull_surrounds_the_brain_with_signal_and_the_classic_world_is_brain_extracted():
    head = make_case("healthy", seed=1, index=0, spacing=SPACING, world=world_named("realistic", on=["skull"]))
    brain = make_case("healthy", seed=1, index=0, spacing=SPACING, world=REALISTIC)
    t1_head, t1_brain = (sitk.GetArrayFromImage(c.images["t1"]) for c in (head, brain))
    outside = t1_brain == 0
    assert np.percentile(t1_head[outside & (ndimage.distance_transform_edt(outside) < 4)], 90) > np.median(
        t1_brain[~outside]
    )  # bright scalp fat and marrow on T1
    assert np.all(t1_brain[outside] == 0)


def test_unknown_switches_and_worlds_are_refused_with_the_known_names():
    with pytest.raises(UserError, match="thick-slices"):
        world_named("realistic", off=["thick"])
    with pytest.raises(UserError, match="classic or realistic"):
        world_named("fancy")


def test_the_cli_writes_a_realistic_cohort_and_records_its_world(tmp_path, capsys):
    out = tmp_path / "ukb"
    code, _, err = run_cli(
        [
            *("synth", "--out", out, "--kind", "healthy", "--n", "1", "--spacing", "4", "--world", "realistic"),
            *("--without", "thick-slices", "--with", "skull", "--progress", "none"),
        ],
        capsys,
    )
    assert code == 0, err
    description = json.loads((out / "datalist.json").read_text())["description"]
    assert "skull" in description["world"]
    assert "thick_slices" not in description["world"]
    assert "texture" in description["world"]
