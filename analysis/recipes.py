"""Figure recipes: a small JSON document that re-creates a figure headlessly.

A recipe is ``{"repscope_recipe": 1, "figure": KIND, "model": NAME, "config": {...}}``.
Every exported figure carries one; ``repscope figure recipe.json --out DIR``
rebuilds the figure, its data (CSV) and the image files without the app.

Each method package's ``recipes`` module declares ``RECIPES``: a dict from a
figure kind to ``fn(lm, config) -> (plotly Figure, pandas DataFrame)``.
The modules are listed here (a registry as data, STYLE habit 4) and imported
only when a recipe of theirs is run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

RECIPE_VERSION = 1
RECIPE_MODULES = (
    "analysis.inspection.recipes",
    "analysis.concepts.recipes",
    "analysis.saes.recipes",
    "analysis.bias.recipes",
    "analysis.steering.recipes",
    "analysis.likelihood.recipes",
    "analysis.compare.recipes",
)

RecipeFn = Callable[..., tuple[Any, Any]]


def make_recipe(figure: str, model: str, config: dict[str, Any]) -> dict[str, Any]:
    """The recipe dict for a figure; ``config`` must be JSON-serialisable."""
    json.dumps(config)  # fail here, not at download time
    return {"repscope_recipe": RECIPE_VERSION, "figure": figure, "model": model, "config": config}


def check_config_keys(cls, config: dict[str, Any], what: str) -> None:
    """Raise ValueError naming unknown keys of a recipe ``config`` for dataclass ``cls``."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; valid keys are {sorted(known)}")


def registry() -> dict[str, RecipeFn]:
    found: dict[str, RecipeFn] = {}
    for name in RECIPE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # module not written yet; anything else is a real error
                continue
            raise
        found.update(getattr(module, "RECIPES", {}))
    return found


def read_recipe(path: str | Path) -> dict[str, Any]:
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON recipe ({err})") from err
    if not isinstance(recipe, dict) or recipe.get("repscope_recipe") != RECIPE_VERSION:
        raise ValueError(f"{path}: not a RepScope recipe (expected 'repscope_recipe': {RECIPE_VERSION})")
    for key in ("figure", "model", "config"):
        if key not in recipe:
            raise ValueError(f"{path}: recipe has no {key!r} field")
    return recipe


def run_recipe(recipe: dict[str, Any], lm=None):
    """Rebuild ``(figure, frame)`` from a recipe, loading its model if none given."""
    kinds = registry()
    kind = recipe["figure"]
    if kind not in kinds:
        raise ValueError(f"unknown figure kind {kind!r}; known kinds: {sorted(kinds)}")
    if lm is None:
        from analysis.models import load_model

        lm = load_model(recipe["model"])
    return kinds[kind](lm, recipe["config"])
