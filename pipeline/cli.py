"""`vggpipe`: the command users meet. Each subcommand parses its arguments and
calls one `pipeline` function; errors users can fix exit non-zero with one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Each stage module registers its subcommand here through `subcommand`, so this
# file stays a thin dispatcher and the stage keeps its own argument list.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option): printed as one line."""


def subcommand(register: Callable[[argparse._SubParsersAction], None]):
    _SUBCOMMANDS.append(register)
    return register


@subcommand
def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo on this machine (local Ray, local MLflow store)",
        description="Run the demo. For now: build every VGG config of the paper's "
        "Table 1 and print its weight layers, parameters and multiply-adds at 224.",
    )
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from vgg.summary import config_table

    print(config_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vggpipe",
        description="VGG (Simonyan & Zisserman, 2015) as a distributed pipeline on Ray, "
        "tracked in MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"vggpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vggpipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
