"""A model whose licence needs acceptance, in the panel's Logic: asked once, then remembered."""

from __future__ import annotations

import pytest
import slicer  # noqa: F401  (before scenes: slicer-core's package scan imports the test folder too)
import torch

from brainsegfounder import licences
from brainsegfounder.errors import UserError
from BrainSegFounderSlicerLib.logic import WorkflowLogic
from BrainSegFounderSlicerLib.models import ModelManager

from scenes import new_scene


def test_the_panel_asks_once_for_a_licence_that_needs_acceptance(home, tmp_path):
    cache = home / "downloads"
    cache.mkdir(parents=True)
    downloaded = cache / "model_weights_BRATS-finetune.pt"
    torch.save({"w": torch.zeros(2)}, downloaded)
    logic = WorkflowLogic(new_scene()[0], ModelManager(cache=cache))
    mta = logic.models.choice("registry:brainsegfounder-brats")
    demo = logic.models.choice("registry:brats-synthetic-demo")

    assert logic.licence_to_accept(demo) is None  # Apache-2.0: nothing to accept
    question = logic.licence_to_accept(mta)
    assert "uk-biobank-mta" in question
    assert "must be accepted before its first use" in mta.panel_text(mta.inputs)
    with pytest.raises(UserError, match="accept the licence"):
        logic.start_segmentation({}, mta)
    with pytest.raises(UserError, match="accept the licence"):
        logic.start_finetune(mta, data=tmp_path)

    logic.accept_licence(mta)
    assert logic.licence_to_accept(logic.models.choice("registry:brainsegfounder-brats")) is None
    assert licences.pending(str(downloaded)) is None  # the engine reads the same record
    assert licences.pending("brainsegfounder-atlas") is not None  # per model
