"""`vggpipe train`, `evaluate` and `tune`: one stage each."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_address, add_overrides


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
    parser.add_argument("--recipe", required=True, help="named recipe (listed below)")
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    add_overrides(
        parser,
        "--set",
        "overrides",
        "override a config field, e.g. --set lr=0.005 --set num_workers=8 (repeatable)",
    )
    parser.add_argument("--init-from", help="net A to copy from: MLflow run id or checkpoint path")
    add_address(parser)
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
    config = _train_config(args)  # validated before torch, Ray or MLflow load
    from pipeline import tracking
    from pipeline.train import summary_lines, train

    result = train(config, address=args.address)
    print("\n".join(summary_lines(result, tracking.tracking_uri(config.tracking_uri))))
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument(
        "--dense-pooling",
        choices=("mean", "sum"),
        default=defaults.dense_pooling,
        help="dense evaluation: average the class-score map (default) or sum it, the "
        "paper's 'sum-pooled' read literally",
    )
    parser.add_argument(
        "--dense-floor-pooling",
        dest="dense_ceil_mode",
        action="store_false",
        help="dense evaluation: max-pools round odd sizes down (PyTorch's default) "
        "instead of up (the paper's Caffe nets)",
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
    add_address(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.config import SCALE_SETS, EvaluateConfig

    config = EvaluateConfig(  # validated here, before any Ray work
        models=tuple(args.models),
        data=args.data,
        split=args.split,
        protocols=tuple(p.strip() for p in args.protocols.split(",") if p.strip()),
        scales=tuple(args.scales) if args.scales else SCALE_SETS,
        ensemble=args.ensemble,
        grid=args.grid,
        dense_pooling=args.dense_pooling,
        dense_ceil_mode=args.dense_ceil_mode,
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
    parser.add_argument("--recipe", required=True, help="named sweep recipe (listed below)")
    parser.add_argument("--data", help="prepared dataset (the preprocess output); sets data=")
    add_overrides(
        parser,
        "--set",
        "overrides",
        "override a sweep or training field, e.g. --set lrs=0.01,0.003 --set "
        "scales=256,256:512 --set grid.width=0.5,1 --set epochs=8 (repeatable)",
    )
    add_address(parser)
    parser.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from pipeline.recipes import tune_recipe

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
    config = tune_recipe(args.recipe, overrides)  # validated before torch, Ray or MLflow load
    from pipeline.tune import summary_lines, tune

    print("\n".join(summary_lines(tune(config, address=args.address))))
    return 0
