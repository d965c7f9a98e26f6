"""`vggpipe`: the command users meet. Each subcommand parses its arguments and
calls one `pipeline` function; errors users can fix exit non-zero with one line.

The subcommands live beside this file by kind (`workflow`, `stages`, `data`,
and `pipeline.submit`); each module imports only argparse and the light config
modules at the top, so `--help` and a config error answer without loading
torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import submit
from pipeline.cli import data, stages, workflow
from pipeline.errors import user_error_within

# In the order `vggpipe --help` lists them.
COMMANDS = (
    workflow.register_run,
    workflow.register_demo,
    submit.register,
    data.register_preprocess,
    data.register_verify,
    data.register_demo_data,
    stages.register_train,
    stages.register_evaluate,
    stages.register_tune,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vggpipe",
        description="VGG (Simonyan & Zisserman, 2015) as a distributed pipeline on Ray, "
        "tracked in MLflow.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"vggpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Only the project's own user errors become one line, also when raised
        # in a Ray task or training worker and wrapped in Ray's errors; anything
        # else (a ValueError of a bug included) keeps its traceback.
        message = user_error_within(exc)
        if message is None:
            raise
        print(f"vggpipe {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
