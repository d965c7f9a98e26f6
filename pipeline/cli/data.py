"""`vggpipe preprocess`, `verify` and `demo-data`: the data commands."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.options import add_config_file, add_overrides, file_values, printed, with_file
from pipeline.errors import UserError


def register_preprocess(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.preprocess.config import PreprocessConfig

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
    # Flags default to None: unset, the --config file's value (else the config's) holds.
    for flag, type_, what in (
        ("--max-short-side", int, "shrink the shorter side to at most this many pixels, never "
         "enlarge"),
        ("--jpeg-quality", int, "JPEG quality of re-encoded images"),
        ("--shard-rows", int, "most images per shard"),
        ("--seed", int, "seed of the row order across shards"),
        ("--max-rejected-fraction", float, "fail when more than this fraction of the images "
         "cannot be decoded or labelled"),
        ("--stats-images", int, "training images sampled for mean RGB and RGB eigenvectors"),
    ):  # fmt: skip
        default = getattr(defaults, flag.removeprefix("--").replace("-", "_"))
        parser.add_argument(flag, type=type_, help=f"{what} (default {default})")
    add_config_file(parser)
    add_overrides(
        parser, "--set", "overrides", "override a config field, e.g. --set seed=1 (repeatable)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on (default: RAY_ADDRESS, else a new local Ray instance)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_preprocess)


def _preprocess_config(args: argparse.Namespace):
    import dataclasses

    from pipeline.config import apply_overrides
    from pipeline.preprocess.config import PreprocessConfig

    config = with_file(PreprocessConfig(), file_values(args), args, PreprocessConfig)
    flags = [  # every field has a flag of its name
        f"{field.name}={value}"
        for field in dataclasses.fields(PreprocessConfig)
        if (value := getattr(args, field.name)) is not None
    ]
    return apply_overrides(config, [*args.overrides, *flags])


def _run_preprocess(args: argparse.Namespace) -> int:
    config = _preprocess_config(args)
    if printed(config, args):
        return 0
    from pipeline.preprocess import preprocess

    summary = preprocess(
        args.source,
        args.output,
        address=args.address,
        progress=not args.no_progress,
        **config.to_dict(),
    )
    print(summary.report())
    return 0


def register_verify(subparsers: argparse._SubParsersAction) -> None:
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


def register_demo_data(subparsers: argparse._SubParsersAction) -> None:
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
