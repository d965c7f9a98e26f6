"""Options several `vggpipe` commands share, declared once."""

from __future__ import annotations

import argparse


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
