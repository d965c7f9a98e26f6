"""`vggpipe`: the command users meet. Each subcommand parses its arguments and
calls one `pipeline` function; errors users can fix exit non-zero with one line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

# Each stage module registers its subcommand here through `subcommand`, so this
# file stays a thin dispatcher and the stage keeps its own argument list.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option): printed as one line."""


def subcommand(register: Callable[[argparse._SubParsersAction], None]):
    _SUBCOMMANDS.append(register)
    return register


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")


def _add_overrides(parser: argparse.ArgumentParser, flag: str, dest: str, help: str) -> None:
    """A repeatable KEY=VALUE option collecting into `dest` (a config's --set)."""
    parser.add_argument(
        flag, dest=dest, action="append", default=[], metavar="KEY=VALUE", help=help
    )


@subcommand
def _register_run(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--recipe", required=True, help="named workflow recipe (listed below)")
    parser.add_argument(
        "--data",
        required=True,
        help="ILSVRC-2012 (folders or the official tars, as for `vggpipe preprocess`) or a "
        "prepared dataset (a preprocess output); local path or pyarrow.fs URI",
    )
    _add_workflow_arguments(parser)
    parser.set_defaults(func=_run_run)


def _add_workflow_arguments(parser: argparse.ArgumentParser, work_dir: str | None = None) -> None:
    parser.add_argument(
        "--work-dir",
        default=work_dir,
        help="shards, checkpoints and tables; shared storage on a cluster "
        f"(default {work_dir or 'vggpipe-work'})",
    )
    parser.add_argument(
        "--run-name", help="MLflow parent run (default: recipe and a settings digest)"
    )
    for flag, dest, what in (
        ("--set", "overrides", "a workflow field, e.g. --set from_a=B,D --set base_epochs=4"),
        ("--train-set", "train_overrides", "a training field of every net, e.g. num_workers=16"),
        ("--eval-set", "eval_overrides", "an evaluation field, e.g. workers=8 or limit=1000"),
    ):
        _add_overrides(parser, flag, dest, f"override {what} (repeatable)")
    parser.add_argument(
        "--plan", action="store_true", help="print the stages and which are finished; run nothing"
    )
    _add_address(parser)


def _workflow_config(recipe_name: str, args: argparse.Namespace, data: str):
    from pipeline.recipes import workflow_recipe

    overrides = [f"data={data}", *args.overrides]
    if args.work_dir:
        overrides.append(f"work_dir={args.work_dir}")
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    config = workflow_recipe(recipe_name, overrides)
    extra = {
        "train_overrides": (*config.train_overrides, *args.train_overrides),
        "eval_overrides": (*config.eval_overrides, *args.eval_overrides),
    }
    return dataclasses.replace(config, **extra)  # validated here, before any Ray work


def _print_plan(config) -> int:
    from pipeline import tracking
    from pipeline.workflow.driver import finished_stage, plan

    uri = tracking.tracking_uri(config.tracking_uri)
    for stage in plan(config):
        finished = finished_stage(stage, config.experiment, uri)
        state = f"finished (run {finished.info.run_id})" if finished else "to run"
        needs = f" <- {', '.join(stage.needs)}" if stage.needs else ""
        print(f"{stage.key:24s} {state}{needs}")
    return 0


def _execute_workflow(config, args: argparse.Namespace) -> int:
    from pipeline.workflow.driver import run, summary_lines

    if args.plan:
        return _print_plan(config)
    result = run(config, address=args.address)
    print("\n".join(summary_lines(result)))
    return 1 if result.failed else 0


def _run_run(args: argparse.Namespace) -> int:
    return _execute_workflow(_workflow_config(args.recipe, args, args.data), args)


@subcommand
def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole recipe on demo data, on this machine (local Ray, local MLflow store)",
        description="Write the demo data (scikit-learn's handwritten digits as JPEGs in the "
        "ILSVRC-2012 layout) into WORK_DIR/source, then run `vggpipe run --recipe demo` on "
        "it: narrow nets on small crops on a local Ray instance, tracked in ./mlflow.db. "
        "Prints the paper-style tables and the command that opens the MLflow UI. Running it "
        "again reuses every finished stage.",
    )
    _add_workflow_arguments(parser, work_dir="vggpipe-demo")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pipeline.demo_data import make_demo_data

    source = Path(args.work_dir) / "source"
    if not (source / "train").is_dir():
        demo = make_demo_data(source)
        print(
            f"Wrote the demo data: {demo.count('train'):,} train and {demo.count('val'):,} val "
            f"images of {len(demo.wnids)} classes in {source}"
        )
    return _execute_workflow(_workflow_config("demo", args, str(source)), args)


@subcommand
def _register_submit(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.submit import register

    register(subparsers)


@subcommand
def _register_preprocess(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.preprocess.run import PreprocessConfig

    defaults = PreprocessConfig()
    parser = subparsers.add_parser(
        "preprocess",
        help="turn ILSVRC-2012 (folders or the official tars) into Arrow shards",
        description="Decode, shrink and re-encode every image of an ILSVRC-2012 copy into "
        "Arrow shards plus manifest.json, as Ray tasks. SOURCE holds train/<wnid>/ with "
        "val/<wnid>/ or a flat val/ (labelled by LOC_val_solution.csv or the devkit), or the "
        "official tars ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar with the devkit "
        "tarball or LOC_val_solution.csv. SOURCE and OUTPUT may be local paths or pyarrow.fs "
        "URIs (s3://...). Rerunning on a finished OUTPUT does nothing; rerunning after an "
        "interrupted run redoes only the missing shards.",
    )
    parser.add_argument("source", metavar="SOURCE", help="folder holding the ILSVRC-2012 copy")
    parser.add_argument("output", metavar="OUTPUT", help="folder for the shards and manifest")
    parser.add_argument(
        "--max-short-side",
        type=int,
        default=defaults.max_short_side,
        help="shrink the shorter side to at most this many pixels, never enlarge "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=defaults.jpeg_quality,
        help="JPEG quality of re-encoded images (default %(default)s)",
    )
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=defaults.shard_rows,
        help="most images per shard (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the row order across shards (default %(default)s)",
    )
    parser.add_argument(
        "--max-rejected-fraction",
        type=float,
        default=defaults.max_rejected_fraction,
        help="fail when more than this fraction of the images cannot be decoded or "
        "labelled (default %(default)s)",
    )
    parser.add_argument(
        "--stats-images",
        type=int,
        default=defaults.stats_images,
        help="training images sampled for mean RGB and RGB eigenvectors (default %(default)s)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on (default: RAY_ADDRESS, else a new local Ray instance)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from pipeline.preprocess.run import preprocess

    summary = preprocess(
        args.source,
        args.output,
        max_short_side=args.max_short_side,
        jpeg_quality=args.jpeg_quality,
        shard_rows=args.shard_rows,
        seed=args.seed,
        max_rejected_fraction=args.max_rejected_fraction,
        stats_images=args.stats_images,
        address=args.address,
        progress=not args.no_progress,
    )
    print(summary.report())
    return 0


@subcommand
def _register_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="re-read every shard of a preprocess output and check it against the manifest",
        description="Re-read every shard listed in OUTPUT/manifest.json and check its row "
        "count and sha256. Exits 1 naming each bad shard, 0 when all are intact.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="a finished preprocess output")
    parser.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from pipeline.shards import ShardStore

    store = ShardStore(args.output)
    manifest = store.manifest()
    problems = store.verify(progress=True)
    for problem in problems:
        print(f"vggpipe verify: bad shard {problem}", file=sys.stderr)
    shards = sum(len(split.shards) for split in manifest.splits.values())
    rows = sum(split.rows for split in manifest.splits.values())
    if problems:
        print(f"{len(problems)} problem(s) in {shards} shards of {args.output}")
        return 1
    print(f"{args.output}: all {shards} shards intact ({rows:,} rows)")
    return 0


@subcommand
def _register_demo_data(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.demo_data import LAYOUT_CHOICES, VAL_LABEL_CHOICES

    parser = subparsers.add_parser(
        "demo-data",
        help="write a small real data set (scikit-learn's digits) in an ILSVRC-2012 layout",
        description="Write scikit-learn's handwritten digits (10 classes, 1,797 images) as "
        "colour JPEGs of varied sizes in an ILSVRC-2012 layout, split train/val, for trying "
        "and testing `vggpipe preprocess` without ImageNet. Nothing is downloaded.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="new (or empty) folder to write")
    parser.add_argument(
        "--layout",
        choices=LAYOUT_CHOICES,
        default="folders",
        help="folders: train/<wnid>/ and val/<wnid>/; flat-val: a flat val/ with labels; "
        "tars: the official ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--val-labels",
        choices=VAL_LABEL_CHOICES,
        default=None,
        help="labels of a flat val: Kaggle's LOC_val_solution.csv or the devkit tarball "
        "(default: loc-csv for flat-val, devkit for tars)",
    )
    parser.add_argument(
        "--quirks",
        action="store_true",
        help="add a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a truncated JPEG and "
        "a zero-byte file",
    )
    parser.add_argument(
        "--per-class", type=int, default=None, help="digits per class (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    parser.set_defaults(func=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> int:
    from pipeline.demo_data import make_demo_data

    try:
        demo = make_demo_data(
            args.output,
            layout=args.layout,
            val_labels=args.val_labels,
            quirks=args.quirks,
            per_class=args.per_class,
            seed=args.seed,
        )
    except FileExistsError as exc:
        raise UserError(str(exc)) from exc
    print(
        f"Wrote {demo.count('train'):,} train and {demo.count('val'):,} val images of "
        f"{len(demo.wnids)} classes to {demo.root} (layout {demo.layout}, "
        f"val labels {demo.val_labels})."
    )
    for key, quirk in sorted(demo.quirks().items()):
        print(f"  quirk: {key} ({quirk})")
    print(f"Next: vggpipe preprocess {demo.root} OUTPUT")
    return 0


@subcommand
def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.recipes import RECIPES

    parser = subparsers.add_parser(
        "train",
        help="train a VGG net with Ray Train, tracked in MLflow",
        description="Train one of the paper's nets (or the demo/smoke nets) data-parallel "
        "with Ray Train. Every epoch is checkpointed; rerunning the same run name resumes "
        "it. Metrics, params and the best and final models go to MLflow "
        "(MLFLOW_TRACKING_URI, else ./mlflow.db).",
        epilog="recipes: " + ", ".join(RECIPES),
    )
    parser.add_argument("--recipe", required=True, help="named recipe (listed below)")
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    _add_overrides(
        parser,
        "--set",
        "overrides",
        "override a config field, e.g. --set lr=0.005 --set num_workers=8 (repeatable)",
    )
    parser.add_argument("--init-from", help="net A to copy from: MLflow run id or checkpoint path")
    _add_address(parser)
    parser.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace):
    from pipeline.recipes import recipe

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
    if getattr(args, "init_from", None):
        overrides.append(f"init_from={args.init_from}")
    return recipe(args.recipe, overrides)


def _run_train(args: argparse.Namespace) -> int:
    from pipeline import tracking
    from pipeline.train.driver import summary_lines, train

    config = _train_config(args)  # validated here, before any Ray work
    result = train(config, address=args.address)
    print("\n".join(summary_lines(result, tracking.tracking_uri(config.tracking_uri))))
    return 0


@subcommand
def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.evaluation.config import EVALUATION_PROTOCOLS, EvaluateConfig

    defaults = EvaluateConfig(models=("-",))
    parser = subparsers.add_parser(
        "evaluate",
        help="the paper's test protocols (dense, multi-crop, multi-scale, ensembles) as tables",
        description="Evaluate trained nets with the paper's test protocols over Ray and print "
        "the table (config, training S, test Q, protocol, top-1 and top-5 error), also written "
        "as Markdown, CSV and JSON to --output and logged to MLflow: on each net's run, and "
        "on a new evaluation run for an ensemble, several nets, or a net with no run.",
        epilog="MODEL is an MLflow run id (its best checkpoint), a registered model "
        "(models:/NAME/VERSION, models:/NAME@ALIAS or NAME/VERSION), a checkpoint folder, or a "
        "torchvision VGG state dict file (.pth; normalised with torchvision's mean and std). "
        "Scale sets: 'single' is Q = S (the middle of [Smin, Smax] when jittered), 'multi' is "
        "{S-32, S, S+32} ({Smin, middle, Smax} when jittered), or explicit Q like 256,384,512.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="nets to evaluate")
    parser.add_argument(
        "--data", default="", help="prepared dataset (default: the first net's training data)"
    )
    parser.add_argument("--split", default=defaults.split, help="split (default %(default)s)")
    parser.add_argument(
        "--protocols",
        default=",".join(defaults.protocols),
        help=f"comma-separated, from {', '.join(EVALUATION_PROTOCOLS)} (default: all)",
    )
    parser.add_argument(
        "--scales",
        action="append",
        default=None,
        metavar="SET",
        help="a scale set: single, multi, or Q1,Q2,... (repeatable; default: single and multi)",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="also evaluate the nets' averaged posteriors"
    )
    parser.add_argument(
        "--grid", type=int, default=defaults.grid, help="multi-crop grid side (default 5: 50 crops)"
    )
    parser.add_argument("--limit", type=int, help="evaluate only the split's first LIMIT images")
    parser.add_argument(
        "--predictions",
        action="store_true",
        help="also write every image's top-5 classes per row to OUTPUT/predictions.parquet",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="most crops or whole images per forward pass (default %(default)s)",
    )
    parser.add_argument(
        "--dense-batch-size",
        type=int,
        help="most equal-size whole images per dense forward pass "
        "(default: half --batch-size on a GPU, 1 on a CPU)",
    )
    parser.add_argument("--workers", type=int, help="Ray tasks (default: one per GPU, else 1)")
    parser.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run on GPUs (default: when the cluster has them)",
    )
    parser.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker)
    parser.add_argument("--data-cpus-per-task", type=float, default=defaults.data_cpus_per_task)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the device")
    parser.add_argument("--output", help="folder for the tables (default evaluations/NAME)")
    parser.add_argument("--run-name", help="name of the MLflow evaluation run (default derived)")
    parser.add_argument("--experiment", default=defaults.experiment, help="MLflow experiment")
    parser.add_argument(
        "--tracking-uri", help="MLflow store (default MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    _add_address(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.config import SCALE_SETS, EvaluateConfig
    from pipeline.evaluation.driver import run_evaluation

    config = EvaluateConfig(  # validated here, before any Ray work
        models=tuple(args.models),
        data=args.data,
        split=args.split,
        protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        scales=tuple(args.scales) if args.scales else SCALE_SETS,
        ensemble=args.ensemble,
        grid=args.grid,
        limit=args.limit,
        predictions=args.predictions,
        batch_size=args.batch_size,
        dense_batch_size=args.dense_batch_size,
        workers=args.workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        data_cpus_per_task=args.data_cpus_per_task,
        bf16=args.bf16,
        output=args.output,
        run_name=args.run_name,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
    )
    result = run_evaluation(config, address=args.address, progress=not args.no_progress)
    print(result.summary())
    return 0


@subcommand
def _register_tune(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.recipes import TUNE_RECIPES

    parser = subparsers.add_parser(
        "tune",
        help="sweep learning rates and training scales with Ray Tune and ASHA, in MLflow",
        description="Sweep training runs with Ray Tune: a grid (or log-uniform draws) of "
        "learning rates, a grid of training scales S, and grids over any training field. "
        "Each trial trains with Ray Train; ASHA stops poor trials early on validation top-1 "
        "error. MLflow gets a parent run for the sweep with each trial's training run nested "
        "under it, the trials table and a plot of error against learning rate; the best "
        "trial's model is registered with an alias (champion). Running the same sweep name "
        "again resumes it without re-running finished trials.",
        epilog="recipes: "
        + ", ".join(TUNE_RECIPES)
        + ". --set takes sweep fields (name, lrs=0.01,0.001, lr_range=1e-4:1e-1, "
        "num_samples, scales=256,384,256:512, grace_period, reduction_factor, "
        "max_concurrent_trials, registered_model, alias), grid.FIELD=V1,V2 for a grid over "
        "a training field, and training fields (train.FIELD or FIELD) for the base config.",
    )
    parser.add_argument("--recipe", required=True, help="named sweep recipe (listed below)")
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    _add_overrides(
        parser,
        "--set",
        "overrides",
        "override a sweep or training field, e.g. --set lrs=0.01,0.003 --set "
        "scales=256,256:512 --set grid.width=0.5,1 --set epochs=8 (repeatable)",
    )
    _add_address(parser)
    parser.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from pipeline.recipes import tune_recipe
    from pipeline.tune.driver import summary_lines, tune

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
    config = tune_recipe(args.recipe, overrides)  # validated here, before any Ray work
    print("\n".join(summary_lines(tune(config, address=args.address))))
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
