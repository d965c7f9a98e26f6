"""`vggpipe train`, `evaluate` and `tune`: one stage each."""

from __future__ import annotations

import argparse

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


def register_train(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument(
        "--recipe", help="named recipe (listed below); needed unless --config names one"
    )
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    add_config_file(parser)
    add_overrides(
        parser,
        "--set",
        "overrides",
        "override a config field, e.g. --set lr=0.005 --set num_workers=8 (repeatable)",
    )
    parser.add_argument("--init-from", help="net A to copy from: MLflow run id or checkpoint path")
    add_tracking(parser, "MLflow run; running it again resumes it (default: the recipe's name)")
    add_address(parser)
    parser.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace):
    from pipeline.config import apply_overrides
    from pipeline.recipes import RECIPES, recipe
    from pipeline.train.config import TrainConfig

    values = file_values(args)
    config = with_file(recipe_base(args, values, RECIPES, recipe), values, args, TrainConfig)
    flags = given(
        args,
        data="data",
        init_from="init_from",
        run_name="run_name",
        experiment="experiment",
        tracking_uri="tracking_uri",
    )
    return apply_overrides(config, [*args.overrides, *flags])


def _run_train(args: argparse.Namespace) -> int:
    config = _train_config(args)  # validated before torch, Ray or MLflow load
    if printed(config, args):
        return 0
    from pipeline import tracking
    from pipeline.train import summary_lines, train

    result = train(config, address=args.address)
    print("\n".join(summary_lines(result, tracking.tracking_uri(config.tracking_uri))))
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.evaluation.config import EVALUATION_PROTOCOLS, EvaluateConfig

    # Flags default to None: unset, the --config file's value (else the config's) holds.
    defaults = EvaluateConfig(models=("-",))
    parser = subparsers.add_parser(
        "evaluate",
        help="the paper's test protocols (dense, multi-crop, multi-scale, ensembles) as tables",
        description="Evaluate trained nets with the paper's test protocols over Ray and print "
        "the table (config, training S, test Q, protocol, top-1 and top-5 error), also written "
        "as Markdown, CSV and JSON to --output and logged to MLflow: on each net's run, and "
        "on a new evaluation run for an ensemble, several nets, or a net with no run.",
        epilog="MODEL is an MLflow run id (its best checkpoint), a model a run logged "
        "(runs:/RUN_ID/best_model or /final_model), a registered model "
        "(models:/NAME/VERSION, models:/NAME@ALIAS or NAME/VERSION), a checkpoint folder, or a "
        "torchvision VGG state dict file (.pth; normalised with torchvision's mean and std). "
        "Scale sets: 'single' is Q = S (the middle of [Smin, Smax] when jittered), 'multi' is "
        "{S-32, S, S+32} ({Smin, middle, Smax} when jittered), or explicit Q like 256,384,512.",
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="nets to evaluate (or models: in --config)"
    )
    parser.add_argument("--data", help="prepared dataset (default: the first net's training data)")
    parser.add_argument("--split", help=f"split (default {defaults.split})")
    parser.add_argument(
        "--protocols",
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
        "--ensemble",
        action="store_true",
        default=None,
        help="also evaluate the nets' averaged posteriors",
    )
    parser.add_argument(
        "--grid", type=int, help=f"multi-crop grid side (default {defaults.grid}: 50 crops)"
    )
    parser.add_argument(
        "--dense-pooling",
        choices=("mean", "sum"),
        help="dense evaluation: average the class-score map (default) or sum it, the "
        "paper's 'sum-pooled' read literally",
    )
    parser.add_argument(
        "--dense-region",
        choices=("centred", "whole"),
        help="dense evaluation: the part of the image the score windows tile exactly, "
        "centred (default; the whole image at the paper's Q), or the whole image",
    )
    parser.add_argument(
        "--dense-floor-pooling",
        dest="dense_ceil_mode",
        action="store_false",
        default=None,
        help="dense evaluation: max-pools round odd sizes down (PyTorch's default) "
        "instead of up (the paper's Caffe nets)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the split's first LIMIT images")
    parser.add_argument(
        "--predictions",
        action="store_true",
        default=None,
        help="also write every image's top-5 classes per row to OUTPUT/predictions.parquet",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"most crops or whole images per forward pass (default {defaults.batch_size})",
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
        dest="use_gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run on GPUs (default: when the cluster has them)",
    )
    parser.add_argument(
        "--cpus-per-worker", type=float, help=f"(default {defaults.cpus_per_worker})"
    )
    parser.add_argument(
        "--data-cpus-per-task", type=float, help=f"(default {defaults.data_cpus_per_task})"
    )
    parser.add_argument(
        "--bf16", action="store_true", default=None, help="bf16 autocast on the device"
    )
    parser.add_argument("--output", help="folder for the tables (default evaluations/NAME)")
    add_config_file(parser)
    add_overrides(
        parser,
        "--set",
        "overrides",
        "override a config field, e.g. --set scale_step=16 (repeatable)",
    )
    add_tracking(parser, "MLflow evaluation run (default: derived from the nets and settings)")
    add_address(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_evaluate)


def _evaluate_config(args: argparse.Namespace):
    import dataclasses

    from pipeline.config import apply_overrides, split_values
    from pipeline.errors import UserError
    from pipeline.evaluation.config import EvaluateConfig

    values = file_values(args)
    if args.models:  # MODEL arguments are flags: they win over the file's models
        values = {key: value for key, value in values.items() if key != "models"}
    elif "models" not in values:
        raise UserError("evaluate needs one or more MODEL arguments (or models: in --config)")
    base = EvaluateConfig(models=tuple(args.models)) if args.models else None
    config = with_file(base, values, args, EvaluateConfig)
    config = apply_overrides(config, args.overrides)
    # A flag's dest is its field's name; these three are parsed here or positional.
    flags = {
        field.name: value
        for field in dataclasses.fields(EvaluateConfig)
        if field.name not in ("models", "protocols", "scales")
        and (value := getattr(args, field.name, None)) is not None
    }
    if args.protocols is not None:
        flags["protocols"] = tuple(split_values(args.protocols))
    if args.scales:
        flags["scales"] = tuple(args.scales)
    return dataclasses.replace(config, **flags)  # validated here, before any Ray work


def _run_evaluate(args: argparse.Namespace) -> int:
    config = _evaluate_config(args)
    if printed(config, args):
        return 0
    from pipeline.evaluation import run_evaluation

    result = run_evaluation(config, address=args.address, progress=not args.no_progress)
    print(result.summary())
    return 0


def register_tune(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument(
        "--recipe", help="named sweep recipe (listed below); needed unless --config names one"
    )
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    add_config_file(parser)
    add_overrides(
        parser,
        "--set",
        "overrides",
        "override a sweep or training field, e.g. --set lrs=0.01,0.003 --set "
        "scales=256,256:512 --set grid.width=0.5,1 --set epochs=8 (repeatable)",
    )
    add_tracking(parser, "the sweep's name (its MLflow parent run and Tune folder); sets name=")
    add_address(parser)
    parser.set_defaults(func=_run_tune)


def _tune_config(args: argparse.Namespace):
    from pipeline.recipes import TUNE_RECIPES, tune_recipe
    from pipeline.tune.config import TuneConfig, apply_tune_overrides

    values = file_values(args)
    config = with_file(
        recipe_base(args, values, TUNE_RECIPES, tune_recipe), values, args, TuneConfig
    )
    flags = given(
        args,
        data="data",
        name="run_name",
        experiment="experiment",
        tracking_uri="tracking_uri",
    )
    return apply_tune_overrides(config, [*args.overrides, *flags])


def _run_tune(args: argparse.Namespace) -> int:
    config = _tune_config(args)  # validated before torch, Ray or MLflow load
    if printed(config, args):
        return 0
    from pipeline.tune import summary_lines, tune

    print("\n".join(summary_lines(tune(config, address=args.address))))
    return 0
