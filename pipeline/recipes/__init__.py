"""Named recipes: functions returning stage configs, one module per stage kind
(`train`, `tune`, `workflow`). The CLI and `--set key=value` start from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import apply_overrides
from pipeline.errors import ConfigError
from pipeline.recipes.train import RECIPES
from pipeline.recipes.tune import TUNE_RECIPES
from pipeline.recipes.workflow import WORKFLOW_RECIPES


def _named(recipes: dict[str, Callable[..., Any]], name: str, kind: str) -> Any:
    """The config recipe `name` of `recipes` returns; an unknown name lists the known."""
    if name not in recipes:
        raise ConfigError(f"unknown {kind} {name!r}; recipes are {', '.join(recipes)}")
    return recipes[name]()


def recipe(name: str, overrides: list[str] | None = None):
    """The named training recipe's config with `key=value` overrides applied."""
    return apply_overrides(_named(RECIPES, name, "recipe"), overrides or [])


def tune_recipe(name: str, overrides: list[str] | None = None):
    """The named sweep recipe's config with `key=value` overrides applied."""
    from pipeline.tune.config import apply_tune_overrides

    return apply_tune_overrides(_named(TUNE_RECIPES, name, "sweep recipe"), overrides or [])


def workflow_recipe(name: str, overrides: list[str] | None = None):
    """The named workflow recipe's config with `key=value` overrides applied."""
    return apply_overrides(_named(WORKFLOW_RECIPES, name, "workflow recipe"), overrides or [])


__all__ = [
    "RECIPES",
    "TUNE_RECIPES",
    "WORKFLOW_RECIPES",
    "recipe",
    "tune_recipe",
    "workflow_recipe",
]
