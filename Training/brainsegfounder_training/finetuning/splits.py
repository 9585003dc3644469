"""Seeded, deterministic train / validation splits, written next to the run.

Validation cases are always held out: the best model is chosen on them and they are never
trained on. Folds come from the data set where it has them, else they are dealt from a
seeded permutation. ``label_fraction`` keeps a seeded subset of the training split (for
label-efficiency studies); replay cases join training only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Sequence

import numpy as np

from brainsegfounder.errors import UserError

from .datasets import Case


@dataclass
class Split:
    train: List[Case]
    val: List[Case]
    replay: List[Case]
    settings: Dict[str, object]

    def to_dict(self) -> dict:
        return {
            **self.settings,
            "train": [c.case_id for c in self.train],
            "val": [c.case_id for c in self.val],
            "replay": [c.case_id for c in self.replay],
        }


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(ord(ch) for ch in purpose)])


def assign_folds(cases: Sequence[Case], folds: int, seed: int) -> List[Case]:
    """Cases with a fold each: the data set's folds where every case has one, else dealt."""
    if len(cases) < folds:
        raise UserError(
            f"{len(cases)} cases are fewer than the {folds} folds asked for; use fewer folds (data.folds) or more cases"
        )
    if all(c.fold is not None for c in cases):
        present = {c.fold for c in cases}
        if len(present) < folds:
            raise UserError(
                f"the data set's datalist has folds {sorted(present)}, fewer than data.folds={folds}; "
                f"set data.folds to {len(present)}"
            )
        return list(cases)
    order = _rng(seed, "folds").permutation(len(cases))
    folded = list(cases)
    for rank, index in enumerate(order):
        folded[index] = replace(cases[index], fold=rank % folds)
    return folded


def make_split(cases: Sequence[Case], data: dict, seed: int, replay: Sequence[Case] = ()) -> Split:
    """The split a recipe's ``data`` section asks for."""
    if data["split"] == "folds":
        folds = int(data["folds"])
        cases = assign_folds(cases, folds, seed)
        val = [c for c in cases if c.fold == int(data["fold"])]
        train = [c for c in cases if c.fold != int(data["fold"])]
        if not val:
            raise UserError(f"fold {data['fold']} has no cases; choose another data.fold")
    else:
        n_val = max(1, round(len(cases) * float(data["val_fraction"])))
        if len(cases) - n_val < 1:
            raise UserError(f"{len(cases)} case(s) cannot be split into training and validation; save at least 2 cases")
        order = _rng(seed, "fraction").permutation(len(cases))
        val = [cases[i] for i in sorted(order[:n_val])]
        train = [cases[i] for i in sorted(order[n_val:])]
    if not train:
        raise UserError("no training cases are left after holding out validation; add cases or use fewer folds")
    fraction = float(data["label_fraction"])
    if fraction < 1:
        keep = max(1, math.floor(len(train) * fraction + 0.5))
        chosen = sorted(_rng(seed, "label_fraction").choice(len(train), keep, replace=False))
        train = [train[i] for i in chosen]
    if data.get("max_val_cases"):
        val = val[: int(data["max_val_cases"])]
    replay_cases: List[Case] = []
    if replay:
        clash = {c.case_id for c in replay} & {c.case_id for c in val}
        replay = [c for c in replay if c.case_id not in clash]  # a validation case is never trained on
        count = min(len(replay), math.ceil(len(train) * float(data["replay_ratio"])))
        chosen = sorted(_rng(seed, "replay").choice(len(replay), count, replace=False)) if count else []
        replay_cases = [replace(replay[i], source="replay", case_id=f"replay:{replay[i].case_id}") for i in chosen]
    settings = {
        "seed": seed,
        "split": data["split"],
        "folds": data["folds"],
        "fold": data["fold"],
        "val_fraction": data["val_fraction"],
        "label_fraction": fraction,
        "replay_ratio": data["replay_ratio"],
    }
    return Split(train, val, replay_cases, settings)
