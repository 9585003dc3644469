"""Data sources: BraTS 2023 and ATLAS folders without a datalist, and the generic recipe."""

from __future__ import annotations

import numpy as np


def test_brats2023_and_atlas_folders_are_discovered(tmp_path):
    from brainsegfounder.labels import schema
    from brainsegfounder.synth.cohort import write_cohort
    from brainsegfounder_training.finetuning.datasets import check_cases, discover

    brats = write_cohort(tmp_path / "brats23", kind="brats", n=2, seed=3, spacing=4.0, layout="brats2023")
    (brats / "datalist.json").unlink()  # found by its file names alone
    cases = check_cases(discover(brats, ("flair", "t1ce", "t1", "t2")), schema("brats_regions"))
    assert [c.case_id for c in cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    assert [p.rsplit("-", 1)[1] for p in cases[0].image_list()] == [
        "t2f.nii.gz",
        "t1c.nii.gz",
        "t1n.nii.gz",
        "t2w.nii.gz",
    ]
    assert {c.convention for c in cases} == {"brats2023"}  # ET = 3

    atlas = write_cohort(tmp_path / "atlas", kind="stroke", n=2, seed=3, spacing=4.0)
    (atlas / "datalist.json").unlink()
    cases = check_cases(discover(atlas, ("t1",)), schema("lesion"))
    assert [c.case_id for c in cases] == ["sub-r001s001", "sub-r001s002"]
    assert cases[0].image_list()[0].endswith("_space-MNI152NLin2009aSym_T1w.nii.gz")


def test_generic_recipe_is_one_channel_per_label():
    from brainsegfounder.labels import schema
    from brainsegfounder_training.finetuning.initialise import resolve_task
    from brainsegfounder_training.finetuning.recipe import load_recipe

    spec = resolve_task(load_recipe("generic", ["modalities=[T1w, dwi]", "labels=[lesion, edema]", "model.size=tiny"]))
    assert spec.modalities == ("t1", "dwi")
    assert spec.network.in_channels == 2
    assert spec.network.out_channels == 2
    s = schema(spec.label_schema)
    labels = np.array([[0, 1, 2, 2]])
    regions = s.labels_to_regions(labels)
    assert regions.shape == (2, 1, 4)
    assert regions[1].sum() == 2
    assert np.array_equal(s.regions_to_labels(regions), labels)
    assert [seg.name for seg in s.label_values().values()] == ["lesion", "edema"]
