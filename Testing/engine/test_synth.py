"""Synthetic cohorts: layouts, determinism, labels, and contrasts that behave like real MRI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from brainsegfounder.errors import UserError
from brainsegfounder.synth.cohort import case_files, make_case, write_cohort


def arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_brats2021_layout_labels_and_contrasts(brats_root):
    datalist = json.loads((brats_root / "datalist.json").read_text())
    assert [e["fold"] for e in datalist["training"]] == [0, 1]
    entry = datalist["training"][0]
    assert entry["image"][0].endswith("BraTS2021_00001_flair.nii.gz")
    assert entry["label"].endswith("_seg.nii.gz")
    images = {m: arr(brats_root / p) for m, p in zip(("flair", "t1ce", "t1", "t2"), entry["image"], strict=True)}
    seg = arr(brats_root / entry["label"])
    assert set(np.unique(seg)) == {0, 1, 2, 4}
    reference = sitk.ReadImage(str(brats_root / entry["image"][0]))
    assert reference.GetSize() == (80, 80, 52)
    assert reference.GetSpacing() == (3.0, 3.0, 3.0)
    assert np.allclose(reference.GetDirection(), np.eye(3).ravel())  # LPS, as BraTS files
    brain = (images["t1"] > 0) & (seg == 0)
    mean = {
        m: {
            name: images[m][mask].mean()
            for name, mask in (("brain", brain), ("ncr", seg == 1), ("ed", seg == 2), ("et", seg == 4))
        }
        for m in images
    }
    assert mean["flair"]["ed"] > 1.3 * mean["flair"]["brain"]  # edema bright on FLAIR
    assert mean["t1ce"]["et"] > 1.3 * mean["t1ce"]["brain"]  # enhancing rim bright after contrast
    assert mean["t1ce"]["ncr"] < 0.7 * mean["t1ce"]["et"]  # necrosis does not enhance
    assert mean["t2"]["ncr"] > mean["t2"]["brain"]
    assert np.all(images["flair"][images["t1"] == 0] == 0)  # skull-stripped, common brain mask


def test_tissue_contrast_follows_anatomy():
    case = make_case("healthy", seed=1, index=0, spacing=3.0)
    from brainsegfounder.synth.subject import UKB_GRID, make_subject

    subject = make_subject(np.random.default_rng([1, 0]), UKB_GRID, 3.0)
    t1 = sitk.GetArrayFromImage(case.images["t1"]).astype(float)
    flair = sitk.GetArrayFromImage(case.images["flair"]).astype(float)
    pure = {t: subject.tissues[t] > 0.9 for t in ("gm", "wm", "csf")}
    t1_means = {t: t1[m].mean() for t, m in pure.items()}
    assert t1_means["wm"] > t1_means["gm"] > t1_means["csf"]
    assert flair[pure["gm"]].mean() > flair[pure["csf"]].mean() * 2  # CSF suppressed


def test_edema_follows_white_matter():
    from brainsegfounder.synth.lesions import add_tumour
    from brainsegfounder.synth.subject import BRATS_GRID, make_subject

    rng = np.random.default_rng(3)
    subject = make_subject(rng, BRATS_GRID, 3.0)
    tumour = add_tumour(rng, subject)
    wm = subject.tissues["wm"] > 0.5
    assert tumour.edema.any()
    assert tumour.enhancing.any()
    assert wm[tumour.edema].mean() > wm[subject.brain].mean() + 0.15


def test_deterministic_by_seed_and_different_across_seeds():
    a = make_case("stroke", seed=4, index=2, spacing=4.0)
    b = make_case("stroke", seed=4, index=2, spacing=4.0)
    c = make_case("stroke", seed=5, index=2, spacing=4.0)
    ta, tb, tc = (sitk.GetArrayFromImage(x.images["t1"]) for x in (a, b, c))
    assert np.array_equal(ta, tb)
    assert np.array_equal(a.regions["infarct"], b.regions["infarct"])
    assert not np.array_equal(ta, tc)


def test_stroke_lesion_is_dark_on_t1_in_one_hemisphere(tmp_path):
    root = write_cohort(tmp_path, kind="stroke", n=1, seed=2, spacing=3.0)
    _, images, label = case_files("atlas", 0)
    assert images["t1"].endswith("ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")
    t1, mask = arr(root / images["t1"]), arr(root / label)
    assert set(np.unique(mask)) == {0, 1}
    assert t1[mask == 1].mean() < 0.7 * t1[(mask == 0) & (t1 > 0)].mean()
    x = np.argwhere(mask == 1)[:, 2]
    mid = np.argwhere(t1 > 0)[:, 2].mean()
    assert np.all(x > mid) or np.all(x < mid)
    assert (
        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            sitk.ReadImage(str(root / images["t1"])).GetDirection()
        )
        == "RAS"
    )


def test_brats2023_and_ukb_layouts(tmp_path):
    root = write_cohort(tmp_path / "b23", kind="brats", layout="brats2023", n=1, seed=1, spacing=4.0)
    _, images, label = case_files("brats2023", 0)
    assert images["flair"] == "BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz"
    assert set(np.unique(arr(root / label))) <= {0, 1, 2, 3}
    assert 3 in arr(root / label)
    root = write_cohort(tmp_path / "ukb", kind="healthy", n=2, seed=1, spacing=4.0)
    entries = json.loads((root / "datalist.json").read_text())["training"]
    assert entries[1]["image"] == ["1000002/T1/T1_brain_to_MNI.nii.gz", "1000002/T2_FLAIR/T2_FLAIR_brain_to_MNI.nii.gz"]
    assert "label" not in entries[0]


def test_existing_cases_are_never_overwritten_and_cohorts_grow(tmp_path):
    root = write_cohort(tmp_path, kind="healthy", n=1, seed=1, spacing=4.0)
    before = (root / "1000001/T1/T1_brain_to_MNI.nii.gz").read_bytes()
    with pytest.raises(UserError, match="already holds case 1000001"):
        write_cohort(root, kind="healthy", n=1, seed=2, spacing=4.0)
    assert (root / "1000001/T1/T1_brain_to_MNI.nii.gz").read_bytes() == before
    write_cohort(root, kind="healthy", n=1, seed=1, spacing=4.0, start=1)
    assert len(json.loads((root / "datalist.json").read_text())["training"]) == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_cancelled_cohort_keeps_whole_cases_only(tmp_path):
    from brainsegfounder.errors import Cancelled
    from brainsegfounder.progress import CancelToken

    cancel = CancelToken()

    def progress(stage, done, total, message=""):
        if done == 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        write_cohort(tmp_path, kind="stroke", n=3, seed=1, spacing=4.0, progress=progress, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json", "sub-r001s001"]
    assert len(json.loads((tmp_path / "datalist.json").read_text())["training"]) == 1
