"""Recipes: YAML files of run settings over defaults for every key, and ``a.b=value`` overrides.

Fine-tuning and pretraining each bring their own defaults and checks; the reading, merging
and the checks they share live here. Unknown keys are errors (a typo must not silently train
with a default), and the resolved recipe is written next to the run.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import yaml

from brainsegfounder.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def recipe_path(name_or_path: str, folder: Path = CONFIG_DIR) -> Path:
    """A recipe file: a path, or the name of one in ``folder`` (``brats`` -> configs/brats.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = folder / f"{name_or_path}.yaml"
    if os.sep not in name_or_path and bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise UserError(f"recipe {name_or_path} not found; give a YAML file or one of the bundled recipes ({known})")


def _merge(base: dict, update: dict, where: str = "") -> dict:
    for key, value in update.items():
        name = f"{where}{key}"
        if key not in base:
            raise UserError(f"unknown recipe key {name!r}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"recipe key {name!r} must be a mapping of {', '.join(sorted(base[key]))}")
            _merge(base[key], value, name + ".")
        else:
            base[key] = value
    return base


def parse_override(text: str) -> dict:
    """``train.epochs=5`` -> ``{"train": {"epochs": 5}}`` (the value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like key.sub=value, e.g. train.epochs=5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise UserError(f"cannot parse the value of override {text!r} as YAML") from None
    result: Dict[str, Any] = {}
    node = result
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parsed
    return result


def read_recipe(
    name_or_path: Optional[str], overrides: Iterable[str], defaults: dict, check: Callable[[dict], None], folder: Path
) -> dict:
    """``defaults`` <- the recipe file (a path or a name bundled in ``folder``) <- overrides, then ``check``."""
    recipe = copy.deepcopy(defaults)
    if name_or_path:
        path = recipe_path(name_or_path, folder)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"recipe {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"recipe {path} must be a mapping of settings")
        _merge(recipe, data)
    for text in overrides:
        _merge(recipe, parse_override(text))
    check(recipe)
    return recipe


def get(recipe: dict, dotted: str):
    node = recipe
    for part in dotted.split("."):
        node = node[part]
    return node


def check_choices(recipe: dict, choices: Dict[str, Sequence[str]]) -> None:
    for key, allowed in choices.items():
        if get(recipe, key) not in allowed:
            raise UserError(f"recipe {key} is {get(recipe, key)!r}; choose one of {', '.join(allowed)}")


def check_whole_numbers(recipe: dict, keys: Iterable[str], minimum: int = 1) -> None:
    for key in keys:
        value = get(recipe, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"recipe {key} must be a whole number of at least {minimum}, got {value!r}")


def check_optional_whole_numbers(recipe: dict, keys: Iterable[str], minimum: int = 1) -> None:
    """Like :func:`check_whole_numbers`, with None (unset) allowed."""
    check_whole_numbers(recipe, [k for k in keys if get(recipe, k) is not None], minimum)


def _number(value) -> Optional[float]:
    """A recipe number: YAML reads 1e-4 as a string, which float() takes, as the loops do."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_numbers(recipe: dict, ranges: Dict[str, str], off_allowed: bool = False) -> None:
    """Each key's value lies in its interval, written as in mathematics: "[0, 1)", "(0, inf)";
    with ``off_allowed``, false or null (a step turned off) passes too."""
    for key, interval in ranges.items():
        value = get(recipe, key)
        if off_allowed and (value is None or value is False):
            continue
        number = _number(value)
        low, high = (float(x) for x in interval[1:-1].split(","))
        ok = number is not None and (
            (low <= number if interval[0] == "[" else low < number)
            and (number <= high if interval[-1] == "]" else number < high)
        )
        if not ok:
            raise UserError(f"recipe {key} must be a number in {interval}, got {value!r}")


def check_betas(recipe: dict) -> None:
    """``train.betas``: Adam's two moment decays."""
    betas = recipe["train"]["betas"]
    numbers = isinstance(betas, list) and all(isinstance(b, (int, float)) for b in betas)
    if not (numbers and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        raise UserError(f"recipe train.betas {betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.95]")


def check_flags(recipe: dict, keys: Iterable[str]) -> None:
    for key in keys:
        value = get(recipe, key)
        if not isinstance(value, bool):
            raise UserError(f"recipe {key} must be true or false, got {value!r}")


def check_open_fraction(recipe: dict, key: str) -> None:
    check_numbers(recipe, {key: "(0, 1)"})


def check_roi(roi) -> None:
    """SwinUNETR's ROI: each side a multiple of 32 (five halvings) and at least 64."""
    if not (
        isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r >= 64 and r % 32 == 0 for r in roi)
    ):
        raise UserError(f"recipe model.roi {roi!r} must be three multiples of 32, each at least 64")


def dump(recipe: dict) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)
