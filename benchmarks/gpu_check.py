"""The paper recipe's one GPU check: real training runs and dense evaluation, one table.

    python benchmarks/gpu_check.py --out gpu-check.md            # one GPU: a few minutes
    python benchmarks/gpu_check.py --device cpu --width 0.0625   # every line, on a CPU

Through the real Ray Train loop (`pipeline.train.train`) on one worker, from
the `paper-a-256` and `paper-d-jitter` recipes at 224 crops: net A at S = 256,
then net D initialised from that net A (`init_from`, not the recipe's S = 384
start) and jittered over [256; 512]; each with the JPEGs decoded on the CPU
(Ray Data tasks) and on the device (nvJPEG on a GPU). bf16, channels_last and
compile are as the recipes set them on a GPU, all off on the CPU.

Images/s and the fraction of step time spent waiting for data are each run's
last epoch's, as the loop reports them (the epoch's Ray Data start-up
included, as every epoch pays it). A GPU run trains a warm-up epoch first, so
that the measured one pays no compilation. Model FLOP utilisation counts a
training step as three forward passes (PAPER.md section 5) at 2 FLOP per
multiply-add, against the device's peak dense bf16 rate. Last, dense
evaluation of the trained net A at Q = 256: one image per forward pass against
batches of equal-size images, whose posteriors must agree.

The data set is made here, nothing is downloaded: crops of scikit-learn's two
sample photographs, enlarged to ImageNet-like shapes with a 512-pixel short
side (so S = 256, 384 and [256; 512] are served without upsampling), in the
ILSVRC folder layout, preprocessed into shards at max_short_side 512. Its
classes are arbitrary: the check measures speed, not learning. `--data` uses a
prepared dataset instead.

Exits 1 when a measurement fails (its row says why) or the setup does (one
line). Everything is written to a temporary folder, removed at the end, unless
`--work` names one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Published peak dense (no 2:4 sparsity) bf16 tensor rates in TFLOP/s, by a
# substring of torch.cuda.get_device_name(): the SXM boards. The PCIe and NVL
# boards run lower clocks (H100 PCIe 756, H100 NVL and H200 NVL 835): pass
# --peak-tflops for those.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "A100": 312.0}

# Image shapes (height, width) at a 512-pixel short side and how often each is
# drawn: mostly 4:3 landscape, as ILSVRC-2012's photos are.
PHOTO_SHAPES = (((512, 683), 0.6), ((683, 512), 0.2), ((512, 768), 0.1), ((512, 512), 0.1))
STORED_SHORT_SIDE = 512
CROP = 224
DENSE_SCALE = 256

# Defaults by device: on a GPU, enough steps for a steady rate in a few
# minutes; on a CPU, as little as runs every line. The validation split is one
# full batch, so that a compiled net meets one batch shape only.
DEFAULTS = {
    "cuda": {
        "classes": 8,
        "train_per_class": 192,
        "val_per_class": 8,
        "batch": 64,
        "steps": 20,
        "epochs": 2,
        "eval_images": 256,
    },
    "cpu": {
        "classes": 2,
        "train_per_class": 14,
        "val_per_class": 2,
        "batch": 4,
        "steps": 2,
        "epochs": 1,
        "eval_images": 16,
    },
}
HEADER = ("measurement", "images/s", "waiting on data", "MFU", "note")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def by_device(name: str) -> str:
        return f"({DEFAULTS['cuda'][name]} / {DEFAULTS['cpu'][name]})"

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Defaults in (GPU / CPU) depend on --device.",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="train and evaluate on one GPU or on the CPU (default: cuda when there is one)",
    )
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier (1.0, the paper's)"
    )
    parser.add_argument(
        "--data", metavar="PREPARED_SHARDS", help="a preprocess output to use instead of making one"
    )
    parser.add_argument("--classes", type=int, help=f"classes to make {by_device('classes')}")
    parser.add_argument(
        "--train-per-class",
        type=int,
        help=f"training images per class {by_device('train_per_class')}",
    )
    parser.add_argument(
        "--val-per-class",
        type=int,
        help=f"validation images per class {by_device('val_per_class')}",
    )
    parser.add_argument("--batch", type=int, help=f"global batch size {by_device('batch')}")
    parser.add_argument(
        "--steps", type=int, help=f"most training steps per epoch {by_device('steps')}"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs per run, the last one measured {by_device('epochs')}",
    )
    parser.add_argument(
        "--eval-images", type=int, help=f"images evaluated densely {by_device('eval_images')}"
    )
    parser.add_argument(
        "--eval-batch", type=int, default=16, help="most equal-size images per dense pass (16)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak dense bf16 TFLOP/s, for model FLOP utilisation (default: "
        f"{', '.join(f'{k} {v:g}' for k, v in PEAK_BF16_TFLOPS.items())}; n/a on the CPU)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training config field for every run, applied last (e.g. compile=false)",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this Markdown file")
    parser.add_argument(
        "--work", type=Path, help="keep the data, checkpoints and MLflow runs in this folder"
    )
    args = parser.parse_args(argv)
    if args.device is None:
        import torch  # here, not at the top: --help answers without loading torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, value in DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_batch < 1:
        parser.error("--eval-batch must be at least 1")
    return args


# ---------------------------------------------------------------------------
# The data set


def make_photo_source(
    folder: Path, classes: int, train_per_class: int, val_per_class: int, seed: int = 0
) -> None:
    """The ILSVRC folders layout (train/<wnid>/, val/<wnid>/) filled with crops
    of scikit-learn's sample photographs at ImageNet-like shapes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    # The photos are 640x427: enlarged once to a few zooms that cover every
    # shape, so that each image costs only a crop and an encode.
    enlarged = [
        photo.resize((round(photo.width * zoom), round(photo.height * zoom)))
        for photo in photos
        for zoom in (1.8, 2.1, 2.4)
    ]
    rng = np.random.default_rng(seed)
    shapes, shares = zip(*PHOTO_SHAPES, strict=True)
    jobs = []
    for label in range(classes):
        wnid = f"n{label:08d}"
        for index in range(train_per_class + val_per_class):
            if index < val_per_class:
                path = folder / "val" / wnid / f"ILSVRC2012_val_{len(jobs) + 1:08d}.JPEG"
            else:
                path = folder / "train" / wnid / f"{wnid}_{index}.JPEG"
            height, width = shapes[rng.choice(len(shapes), p=shares)]
            picture = enlarged[int(rng.integers(len(enlarged)))]
            left = int(rng.integers(0, picture.width - width + 1))
            top = int(rng.integers(0, picture.height - height + 1))
            jobs.append((picture, (left, top, left + width, top + height), path))

    def write(job) -> None:
        picture, box, path = job
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.crop(box).save(path, "JPEG", quality=90)

    # Pillow releases the GIL while it encodes: threads use every core.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, jobs))


# ---------------------------------------------------------------------------
# The measurements


@dataclass
class Row:
    measurement: str
    images_per_second: float | None = None
    data_wait_fraction: float | None = None
    tflops: float | None = None  # model FLOP/s achieved, divided by the peak in the table
    note: str = ""

    def cells(self, peak_tflops: float | None) -> tuple[str, ...]:
        rate = "-" if self.images_per_second is None else f"{self.images_per_second:.1f}"
        wait = "-" if self.data_wait_fraction is None else f"{100 * self.data_wait_fraction:.0f}%"
        if self.tflops is None:
            mfu = "-"
        else:
            mfu = "n/a" if peak_tflops is None else f"{100 * self.tflops / peak_tflops:.1f}%"
        return (self.measurement, rate, wait, mfu, self.note)


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def training_flops_per_image(config: str, width: float, num_classes: int) -> float:
    """A training step costs about three forward passes (PAPER.md section 5), 2 FLOP per MAC."""
    from vgg import VGG, count_macs

    # Its weights are never used: the bare module skips the random initialisation.
    return 3 * 2 * count_macs(VGG(config, width=width, num_classes=num_classes, crop_size=CROP))


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class Check:
    """The check's runs: their common settings, net A's result, the table's rows."""

    def __init__(self, args: argparse.Namespace, data: str, work: Path) -> None:
        from pipeline.shards import ShardStore

        self.args = args
        self.data = data
        self.num_classes = len(ShardStore(data).manifest().classes)
        self.common = [
            f"width={args.width}",
            "num_workers=1",
            f"use_gpu={args.device == 'cuda'}",
            f"epochs={args.epochs}",
            f"max_steps_per_epoch={args.steps}",
            f"global_batch_size={args.batch}",
            f"crop_size={CROP}",
            f"data={data}",
            f"storage_path={work / 'runs'}",
            f"tracking_uri=sqlite:///{work / 'mlflow.db'}",
            "experiment=gpu-check",
            "keep_checkpoints=1",
            "max_failures=0",  # a failure is a finding here, not something to retry
        ]
        if args.device == "cpu":
            # The recipes' GPU settings off, and the smoke recipe's fractional
            # CPUs, so that the worker and its data tasks fit two cores.
            self.common += [
                "bf16=false",
                "channels_last=false",
                "compile=false",
                "cpus_per_worker=0.5",
                "data_cpus_per_task=0.5",
            ]
        self.common += args.overrides
        self.rows: list[Row] = []
        self.failed = 0
        self.net_a = None  # the TrainResult of net A decoded on the CPU: D's start
        # Run names of their own: a run name that exists would resume that run.
        self.stamp = time.strftime("%Y%m%d-%H%M%S")

    def config(self, recipe_name: str, extra: list[str]):
        from pipeline.recipes import recipe

        return recipe(recipe_name, [*self.common, *extra])

    def measure(self, names: list[str], body: Callable[[], list[Row]]) -> None:
        """The rows `body` measures, named `names`; when it fails, they all do."""
        started = time.perf_counter()
        try:
            rows = body()
        except Exception as error:  # the table says what failed; exit 1 after it
            self.failed += len(names)
            rows = [Row("", note=f"FAILED: {one_line(error)}") for _ in names]
        for name, row in zip(names, rows, strict=True):
            row.measurement = name
        print(f"gpu_check: {'; '.join(names)}: {time.perf_counter() - started:.0f} s", flush=True)
        self.rows += rows

    def training(self, recipe_name: str, decode_on: str, extra: list[str]) -> list[Row]:
        from pipeline.train import train

        config = self.config(
            recipe_name,
            [f"decode_on={decode_on}", f"run_name={recipe_name}-{decode_on}-{self.stamp}", *extra],
        )
        result = train(config)
        metrics = result.metrics
        rate = metrics.get("images_per_second", math.nan)
        if not rate > 0 or not math.isfinite(metrics.get("train_loss", math.nan)):
            raise RuntimeError(f"run {result.run_id} reported {metrics}")
        if config.config == "A" and decode_on == "cpu":
            self.net_a = result
        flops = training_flops_per_image(config.config, config.width, self.num_classes)
        note = f"loss {metrics['train_loss']:.2f}, {int(metrics.get('steps', 0))} steps"
        return [Row("", rate, metrics.get("data_wait_fraction"), rate * flops / 1e12, note)]

    def net_d(self, decode_on: str) -> list[Row]:
        if self.net_a is None:
            raise RuntimeError("net A (decoded on the CPU) did not train, so D has no start")
        return self.training("paper-d-jitter", decode_on, [f"init_from={self.net_a.run_id}"])

    def dense_evaluation(self) -> list[Row]:
        """Net A's dense network at Q = 256, one image per forward pass, then
        equal-size images batched (`vgg.evaluation.bucketed`); each image with
        its flip, as the protocol wants."""
        import torch

        from pipeline import checkpoints, ingest
        from pipeline.shards import ShardStore
        from vgg import to_fully_convolutional
        from vgg.evaluation import bucketed, dense_posteriors
        from vgg.transforms import decode_rescaled, to_model_input

        if self.net_a is None or self.net_a.final_checkpoint is None:
            raise RuntimeError("net A (decoded on the CPU) did not train, so there is no net")
        device = torch.device(self.args.device)
        net = to_fully_convolutional(checkpoints.load(self.net_a.final_checkpoint).model).to(device)
        mean_rgb = ingest.pixel_statistics(self.data).mean_rgb
        bf16 = self.config("paper-a-256", []).bf16
        store = ShardStore(self.data)
        jpegs: list[bytes] = []
        for shard in store.shards("train"):
            if len(jpegs) < self.args.eval_images:
                jpegs += store.read_shard(shard, ["image"])["image"].to_pylist()
        # Writable copies: torch warns on read-only arrays.
        images = [
            (key, np.array(decode_rescaled(data, DENSE_SCALE)))
            for key, data in enumerate(jpegs[: self.args.eval_images])
        ]

        def posteriors(batch: np.ndarray) -> torch.Tensor:
            x = to_model_input(torch.from_numpy(batch).to(device), mean_rgb)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return dense_posteriors(net, x).float()

        def one_at_a_time() -> dict[int, torch.Tensor]:
            return {key: posteriors(image[None])[0] for key, image in images}

        def batched() -> dict[int, torch.Tensor]:
            out: dict[int, torch.Tensor] = {}
            for bucket in bucketed(images, self.args.eval_batch):
                out.update(zip(bucket.keys, posteriors(bucket.stacked()), strict=True))
            return out

        rates, results = {}, {}
        with torch.no_grad():
            for way in (one_at_a_time, batched):
                way()  # warm-up: kernels chosen, memory allocated
                synchronise(device)
                start = time.perf_counter()
                results[way] = way()
                synchronise(device)
                rates[way] = len(images) / (time.perf_counter() - start)
        difference = max(
            float((results[batched][key] - results[one_at_a_time][key]).abs().max())
            for key, _ in images
        )
        if difference > (5e-2 if bf16 else 1e-4):
            raise AssertionError(
                f"batched posteriors differ from one at a time by {difference:.1e}"
            )
        sizes = len({image.shape[:2] for _, image in images})
        passes = sum(1 for _ in bucketed(images, self.args.eval_batch))
        return [
            Row("", rates[one_at_a_time], note=f"{len(images)} images"),
            Row(
                "",
                rates[batched],
                note=f"{passes} passes over {sizes} sizes, posteriors agree to {difference:.0e}",
            ),
        ]


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def peak_tflops(args: argparse.Namespace, name: str) -> float | None:
    if args.peak_tflops is not None or args.device != "cuda":
        return args.peak_tflops
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def run_check(args: argparse.Namespace, work: Path) -> tuple[str, int]:
    """Every measurement; returns the report (heading and table) and how many failed."""
    import ray

    from pipeline.config import train_scale_label
    from pipeline.tables import markdown

    started = time.perf_counter()
    name = device_name(args.device)
    peak = peak_tflops(args, name)
    # Its own Ray, never a cluster that someone's RAY_ADDRESS names.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        data = args.data
        if data is None:
            from pipeline.preprocess import preprocess

            make_photo_source(
                work / "photos", args.classes, args.train_per_class, args.val_per_class
            )
            data = str(work / "shards")
            preprocess(
                str(work / "photos"),
                data,
                max_short_side=STORED_SHORT_SIDE,
                shard_rows=256,
                progress=False,
            )
        check = Check(args, data, work)
        a_scale, d_scale = train_scale_label((256, 256)), train_scale_label((256, 512))
        for decode_on in ("cpu", "device"):
            check.measure(
                [f"train A, S={a_scale}, decode on {decode_on}"],
                lambda d=decode_on: check.training("paper-a-256", d, []),
            )
        for decode_on in ("cpu", "device"):
            check.measure(
                [f"train D from A, S={d_scale}, decode on {decode_on}"],
                lambda d=decode_on: check.net_d(d),
            )
        check.measure(
            [
                f"dense eval A, Q={DENSE_SCALE}, one image at a time",
                f"dense eval A, Q={DENSE_SCALE}, batches of {args.eval_batch}",
            ],
            check.dense_evaluation,
        )
    finally:
        ray.shutdown()
    settings = check.config("paper-a-256", [])
    made = args.classes * (args.train_per_class + args.val_per_class)
    heading = (
        f"gpu_check on {name}: width {args.width:g}, crop {CROP}, global batch {args.batch}, "
        f"at most {args.steps} steps x {args.epochs} epochs per run (the last measured).\n"
        f"bf16 {settings.bf16}, channels_last {settings.channels_last}, "
        f"compile {settings.compile}; "
        + (f"MFU against {peak:g} TFLOP/s dense bf16" if peak else "MFU n/a (no --peak-tflops)")
        + f"; data: {args.data or f'{made} photo crops made here'}"
        + f"; {time.perf_counter() - started:.0f} s in all."
    )
    table = markdown(
        HEADER,
        [row.cells(peak) for row in check.rows],
        numeric=("images/s", "waiting on data", "MFU"),
    )
    return f"{heading}\n\n{table}", check.failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="vggpipe-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report, failed = run_check(args, work.resolve())
    except Exception as error:  # one line, then a non-zero exit
        print(f"gpu_check failed: {one_line(error)}", file=sys.stderr)
        return 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report)
    if args.out:
        args.out.write_text(report)
    if failed:
        print(f"gpu_check: {failed} measurement(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
