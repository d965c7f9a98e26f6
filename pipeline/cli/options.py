"""Options several `vggpipe` commands share, declared once, and how a stage's
config is resolved from them: recipe < --config FILE < --set and flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import UserError


def add_address(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    if default == "local":
        help = "Ray cluster address (default: a new local Ray instance, whatever else runs)"
    else:
        help = (
            "Ray cluster address (default: RAY_ADDRESS, else a cluster `ray start` runs on "
            "this machine, else a new local instance; 'local' always starts a new one)"
        )
    parser.add_argument("--address", default=default, help=help)


def add_overrides(parser: argparse.ArgumentParser, flag: str, dest: str, help: str) -> None:
    """A repeatable KEY=VALUE option collecting into `dest` (a config's --set)."""
    parser.add_argument(
        flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_config_file(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --print-config: the same on every stage."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config fields from a YAML or JSON file (what --print-config prints, or the "
        "config.json a run logs), all or some; over the recipe, under --set and flags",
    )
    parser.add_argument(
        "--print-config",
        nargs="?",
        const="yaml",
        choices=("yaml", "json"),
        metavar="yaml|json",
        help="print the whole resolved config (recipe, --config, --set and flags) as YAML "
        "(or JSON) and exit without running anything",
    )


def add_tracking(parser: argparse.ArgumentParser, run_name: str) -> None:
    """--tracking-uri, --experiment and --run-name: the same on every stage that
    records an MLflow run. Unset, the recipe's or the config file's value holds."""
    from pipeline.config import TrackingSection

    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    experiment = TrackingSection().experiment
    parser.add_argument("--experiment", help=f"MLflow experiment (default {experiment})")
    parser.add_argument("--run-name", help=run_name)


def file_values(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the --config file sets ({} without one)."""
    if not args.config:
        return {}
    from pipeline.config import read_config_file

    return read_config_file(args.config)


def recipe_base(
    args: argparse.Namespace,
    values: Mapping[str, Any],
    recipes: Mapping[str, Any],
    load: Callable[[str], Any],
) -> Any:
    """The config a stage starts from: --recipe (`load`ed), else the recipe of
    `recipes` the config file's `recipe` field names, else None (the config's
    own defaults)."""
    if args.recipe:
        return load(args.recipe)
    if not args.config:
        raise UserError(f"--recipe or --config is required; recipes are {', '.join(recipes)}")
    named = values.get("recipe")
    return load(named) if isinstance(named, str) and named in recipes else None


def with_file(base: Any, values: Mapping[str, Any], args: argparse.Namespace, cls: Any) -> Any:
    """`base` (None: `cls`'s defaults) with the --config file's fields."""
    if not values and base is not None:
        return base
    from pipeline.config import apply_values

    return apply_values(base, values, args.config or "--config", cls)


def given(args: argparse.Namespace, **fields: str) -> list[str]:
    """KEY=VALUE assignments for the flags the user gave, as {field: dest}."""
    return [
        f"{field}={value}"
        for field, dest in fields.items()
        if (value := getattr(args, dest, None)) is not None
    ]


def printed(config: Any, args: argparse.Namespace) -> bool:
    """With --print-config: print `config` and say so (the command then exits)."""
    if not args.print_config:
        return False
    from pipeline.config import config_text

    print(config_text(config, args.print_config), end="")
    return True
