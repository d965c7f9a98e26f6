"""`vggpipe run` and `vggpipe demo`: the paper's whole recipe as one workflow."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from pipeline.cli.options import (
    add_address,
    add_config_file,
    add_overrides,
    add_tracking,
    file_values,
    given,
    printed,
    recipe_base,
    with_file,
)


def register_run(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.recipes import WORKFLOW_RECIPES

    parser = subparsers.add_parser(
        "run",
        help="the paper's whole recipe: preprocess, every net, every evaluation, the tables",
        description="Run the paper's pipeline as a graph of Ray tasks: preprocess and "
        "statistics, net A at the base S, the deeper nets from A, each scale config at the "
        "large S from its base-S net and jittered from that, every net evaluated with the "
        "paper's protocols, the ensemble, and the combined tables. Stages that do not need "
        "each other run at the same time when the cluster has room. MLflow gets one parent "
        "run with every stage nested under it; a stage whose settings and inputs match a "
        "finished stage run is reused, so running the same command again after a crash "
        "resumes where it stopped.",
        epilog="recipes: "
        + ", ".join(WORKFLOW_RECIPES)
        + ". --set takes workflow fields: work_dir, run_name, from_a=B,C,D,E, "
        "random_init=A-LRN, scale_configs=C,D,E, base_scale, large_scale, jitter_scale=256:512, "
        "base_epochs, finetune_epochs, protocols, scales, ensemble=D-256-512,E-256-512, "
        "max_short_side, shard_rows.",
    )
    parser.add_argument(
        "--recipe",
        help="named workflow recipe (listed below); needed unless --config names one",
    )
    parser.add_argument(
        "--data",
        help="ILSVRC-2012 (folders or the official tars, as for `vggpipe preprocess`) or a "
        "prepared dataset (a preprocess output); local path or pyarrow.fs URI; needed "
        "unless --config sets data",
    )
    _add_workflow_arguments(parser)
    parser.set_defaults(func=_run_run)


def _add_workflow_arguments(
    parser: argparse.ArgumentParser, work_dir: str | None = None, address: str | None = None
) -> None:
    parser.add_argument(
        "--work-dir",
        help="shards, checkpoints and tables; shared storage on a cluster "
        f"(default {work_dir or 'vggpipe-work'})",
    )
    add_config_file(parser)
    add_tracking(parser, "MLflow parent run (default: recipe and a settings digest)")
    for flag, dest, what in (
        ("--set", "overrides", "a workflow field, e.g. --set from_a=B,D --set base_epochs=4"),
        ("--train-set", "train_overrides", "a training field of every net, e.g. num_workers=16"),
        ("--eval-set", "eval_overrides", "an evaluation field, e.g. workers=8 or limit=1000"),
    ):
        add_overrides(parser, flag, dest, f"override {what} (repeatable)")
    parser.add_argument(
        "--plan", action="store_true", help="print the stages and which are finished; run nothing"
    )
    add_address(parser, default=address)


def _workflow_config(args: argparse.Namespace, **base_fields: str):
    """recipe < --config < --set and flags; `base_fields` (the demo's own
    work_dir) go on the recipe, under the file."""
    from pipeline.config import apply_overrides
    from pipeline.recipes import WORKFLOW_RECIPES, workflow_recipe
    from pipeline.workflow.config import WorkflowConfig

    values = file_values(args)
    base = recipe_base(args, values, WORKFLOW_RECIPES, workflow_recipe)
    if base_fields:
        base = dataclasses.replace(base or WorkflowConfig(), **base_fields)
    config = with_file(base, values, args, WorkflowConfig)
    flags = given(
        args,
        data="data",
        work_dir="work_dir",
        run_name="run_name",
        experiment="experiment",
        tracking_uri="tracking_uri",
    )
    config = apply_overrides(config, [*args.overrides, *flags])
    extra = {
        "train_overrides": (*config.train_overrides, *args.train_overrides),
        "eval_overrides": (*config.eval_overrides, *args.eval_overrides),
    }
    return dataclasses.replace(config, **extra)  # validated here, before any Ray work


def _print_plan(config) -> int:
    from pipeline import tracking
    from pipeline.workflow import finished_stage, plan

    uri = tracking.tracking_uri(config.tracking_uri)
    for stage in plan(config):
        finished = finished_stage(stage, config.experiment, uri)
        state = f"finished (run {finished.info.run_id})" if finished else "to run"
        needs = f" <- {', '.join(stage.needs)}" if stage.needs else ""
        print(f"{stage.key:24s} {state}{needs}")
    return 0


def _execute_workflow(config, args: argparse.Namespace) -> int:
    if printed(config, args):
        return 0
    if args.plan:
        return _print_plan(config)
    from pipeline.workflow import run, summary_lines

    result = run(config, address=args.address)
    print("\n".join(summary_lines(result)))
    return 1 if result.failed else 0


def _run_run(args: argparse.Namespace) -> int:
    return _execute_workflow(_workflow_config(args), args)


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole recipe on demo data, on this machine (local Ray, local MLflow store)",
        description="Write the demo data (scikit-learn's handwritten digits as JPEGs in the "
        "ILSVRC-2012 layout) into WORK_DIR/source, then run `vggpipe run --recipe demo` on "
        "it: narrow nets on small crops on a local Ray instance, tracked in ./mlflow.db. "
        "Prints the paper-style tables and the command that opens the MLflow UI. Running it "
        "again reuses every finished stage.",
    )
    # The demo is this machine's: never a cluster another command left running.
    _add_workflow_arguments(parser, work_dir=DEMO_WORK_DIR, address="local")
    parser.set_defaults(func=_run_demo, recipe="demo")


DEMO_WORK_DIR = "vggpipe-demo"


# Ray Train's controller looks at its workers every 2 s, which adds seconds to
# the start and the end of every net: nothing on runs of hours, a good part of
# the demo's nets of seconds. The demo's own Ray, so it may look more often.
DEMO_HEALTH_CHECK_SECONDS = "0.5"


def _run_demo(args: argparse.Namespace) -> int:
    from pipeline.demo_data import make_demo_data

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEMO_HEALTH_CHECK_SECONDS)

    config = _workflow_config(args, work_dir=DEMO_WORK_DIR)
    source = Path(config.work_dir) / "source"
    config = dataclasses.replace(config, data=str(source))
    if not args.print_config and not (source / "train").is_dir():
        demo = make_demo_data(source)
        print(
            f"Wrote the demo data: {demo.count('train'):,} train and {demo.count('val'):,} val "
            f"images of {len(demo.wnids)} classes in {source}"
        )
    return _execute_workflow(config, args)
