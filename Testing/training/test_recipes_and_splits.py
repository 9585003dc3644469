"""Recipes load and refuse typos; splits are deterministic, held out and checked."""

from __future__ import annotations

import pytest

from brainsegfounder.errors import UserError


def test_bundled_recipes_load():
    from brainsegfounder_training.finetuning.recipe import load_recipe
    from brainsegfounder_training.harness.recipe import CONFIG_DIR

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"brats", "atlas", "generic", "corrections", "demo"} <= set(names)
    for name in names:
        overrides = ["init.checkpoint=some.pt"] if name == "corrections" else []
        recipe = load_recipe(name, overrides)
        assert recipe["train"]["epochs"] >= 1
    brats = load_recipe("brats")
    # BrainSegFounder's fine-tuning recipe (FACTS.md)
    assert brats["train"]["lr"] == 1e-4
    assert brats["train"]["weight_decay"] == 1e-5
    assert brats["model"]["roi"] == [128, 128, 128]
    assert brats["train"]["loss"] == "dice"


def test_overrides_and_typos():
    from brainsegfounder_training.finetuning.recipe import load_recipe

    recipe = load_recipe("brats", ["train.epochs=7", "model.roi=[96,96,96]", "data.replay=/x"])
    assert recipe["train"]["epochs"] == 7
    assert recipe["model"]["roi"] == [96, 96, 96]
    with pytest.raises(UserError, match=r"unknown recipe key 'train\.epoch'"):
        load_recipe("brats", ["train.epoch=7"])
    with pytest.raises(UserError, match="multiples of 32"):
        load_recipe("brats", ["model.roi=[100,100,100]"])
    with pytest.raises(UserError, match="recipe nosuch not found"):
        load_recipe("nosuch")


def _cases(n, folds=None):
    from brainsegfounder_training.finetuning.datasets import Case

    return [
        Case(f"c{i:02d}", {"t1": f"/d/c{i}.nii.gz"}, f"/d/c{i}_seg.nii.gz", None if folds is None else i % folds)
        for i in range(n)
    ]


def test_splits_are_seeded_held_out_and_label_fraction():
    from brainsegfounder_training.finetuning.splits import make_split

    data = {"split": "folds", "folds": 5, "fold": 2, "val_fraction": 0.2, "label_fraction": 0.5, "replay_ratio": 1.0}
    a = make_split(_cases(20), data, seed=3)
    b = make_split(_cases(20), data, seed=3)
    c = make_split(_cases(20), data, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    assert len(a.val) == 4
    assert len(a.train) == 8
    assert not {x.case_id for x in a.val} & {x.case_id for x in a.train}
    # the data set's own folds are used as they are
    given = make_split(_cases(10, folds=5), dict(data, label_fraction=1.0), seed=0)
    assert [x.case_id for x in given.val] == ["c02", "c07"]
    # replay never brings a validation case into training
    replay = make_split(_cases(10, folds=5), dict(data, label_fraction=1.0), seed=0, replay=_cases(10))
    assert len(replay.replay) == 8
    assert not {"replay:c02", "replay:c07"} & {x.case_id for x in replay.replay}


def test_fewer_cases_than_folds():
    from brainsegfounder_training.finetuning.splits import make_split

    data = {"split": "folds", "folds": 5, "fold": 0, "val_fraction": 0.2, "label_fraction": 1.0, "replay_ratio": 1.0}
    with pytest.raises(UserError, match="3 cases are fewer than the 5 folds"):
        make_split(_cases(3), data, seed=0)
    with pytest.raises(UserError, match="cannot be split"):
        make_split(_cases(1), dict(data, split="fraction"), seed=0)
