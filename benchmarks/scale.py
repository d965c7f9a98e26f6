"""The driver-side costs that grow with the dataset, at ImageNet's size, without
storing a single image.

    python benchmarks/scale.py --images 1281167 [--val 50000] [--compare 128117]

Every phase the driver runs between "here is a source" and "the workers have
their epoch" is run at `--images` training images (and `--val` validation
images), then at `--compare` images to show how it grows: the listing (a
simulated one: the table the listing tasks return, since a real listing walks
the filesystem in parallel Ray tasks and its cost is the filesystem's; the
driver's part, joining their tables, is measured), the plan
(labels, sort, seeded shuffle, cut into shards, written), handing each shard
task its slice of the plan, the manifest (its size, write and read), every
epoch's `epoch_assignment` and per-epoch Ray Data dataset for 8 and 64
workers, the evaluation's dataset over the validation split, and the
workflow's plan (the paper's nets and stages). Each phase's seconds and the
driver's peak memory growth (RSS, sampled every 2 ms) are printed and checked
against `BUDGET`; the exit status is 1 when a phase is over it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.manifest import ClassEntry, Manifest, ShardInfo, SplitInfo
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.plan import make_plan, shard_slices
from pipeline.shards import ShardStore, shard_path
from pipeline.sources import LISTING_SCHEMA, ListingUnit, Source

CLASSES = 1000
# The budget: one epoch of VGG-16 on 8 GPUs at 1,000 images/s each (A100-class,
# mixed precision) is 160 s at ImageNet's 1.28M images; it scales with the
# images. A phase run once per epoch may take 1% of it, a phase run once per
# dataset or run 5%, and no phase may grow the driver by more than 1 GiB.
GPU_IMAGES_PER_SECOND = 8 * 1000
PER_EPOCH_SHARE = 0.01
ONCE_SHARE = 0.05
MEMORY_BUDGET = 1 << 30


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # this process's: less swayed by other programs than `seconds`
    peak_bytes: int  # driver RSS growth over the phase's start


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(step: Callable[[], object]) -> tuple[Measured, object]:
    """Run `step`, timing it and sampling this process's RSS while it runs."""
    start_rss, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = step()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    done.set()
    sampler.join()
    return Measured(seconds, cpu_seconds, max(0, max(peak[0], _rss()) - start_rss)), result


def simulated_listing(train: int, val: int, seed: int = 0) -> list[pa.Table]:
    """What the listing tasks hand the driver for a folders layout of this size:
    one table per class folder (train/<wnid>, then val/<wnid>), one row per
    image, ILSVRC's names, 20-200 kB per file."""
    rng = np.random.default_rng(seed)
    tables = []
    for split, count in (("train", train), ("val", val)):
        classes = np.sort(rng.integers(0, CLASSES, count)) if split == "val" else None
        if classes is None:
            classes = np.arange(count) * CLASSES // max(count, 1)
        wnids = pa.array([f"n{c:08d}" for c in classes])
        numbers = pa.array(np.arange(count).astype(str))
        if split == "train":
            keys = pc.binary_join_element_wise(wnids, numbers, "_")
        else:
            keys = pc.binary_join_element_wise("ILSVRC2012_val", numbers, "_")
        keys = pc.binary_join_element_wise(keys, ".JPEG", "")
        paths = pc.binary_join_element_wise(f"{split}", wnids, keys, "/")
        table = pa.table(
            [
                pa.array([split] * count),
                keys,
                wnids,
                paths,
                pa.array(np.zeros(count, np.int64)),
                pa.array(rng.integers(20_000, 200_000, count)),
            ],
            schema=LISTING_SCHEMA,
        )
        bounds = np.searchsorted(classes, np.arange(CLASSES + 1))
        tables += [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return tables


def simulated_source(root: Path) -> Source:
    wnids = [f"n{index:08d}" for index in range(CLASSES)]
    units = [
        ListingUnit("train", "class-folders", "train"),
        ListingUnit("val", "class-folders", "val"),
    ]
    return Source(
        str(root), pafs.LocalFileSystem(), str(root), "folders", "folders", wnids, {}, units
    )


def manifest_of(plan_info: dict, shard_rows: int) -> Manifest:
    """The manifest a run of this plan writes (checksums made up, sizes typical)."""
    splits = {}
    for split, count in plan_info["shards"].items():
        images = plan_info["images"][split]
        shards = [
            ShardInfo(
                split,
                shard_path(split, index, count),
                (images * (index + 1)) // count - (images * index) // count,
                f"{index:064x}",
                shard_rows * 30_000,
            )
            for index in range(count)
        ]
        splits[split] = SplitInfo(rows=images, shards=shards)
    return Manifest(
        source=plan_info["source"],
        params={k: v for k, v in plan_info["params"].items() if k != "source"},
        splits=splits,
        classes=[ClassEntry(i, wnid, "") for i, (wnid, _) in enumerate(plan_info["classes"])],
        rejected=[],
        statistics=None,
    )


def run_phases(train: int, val: int, scratch: Path) -> dict[str, tuple[str, Measured, str]]:
    """{phase: (kind "once"/"epoch", Measured, note)} at this size."""
    from pipeline.ingest import evaluation_dataset, training_dataset
    from pipeline.shard_datasource import epoch_assignment
    from pipeline.train.config import TrainConfig
    from vgg.transforms import TrainingAugmentation

    root = scratch / f"source-{train}"
    (root / "train").mkdir(parents=True)
    output = scratch / f"dataset-{train}"
    output.mkdir()
    store = ShardStore(str(output))
    config = PreprocessConfig(max_short_side=256, shard_rows=1000)
    phases: dict[str, tuple[str, Measured, str]] = {}

    tables = simulated_listing(train, val)
    measured, listing = measure(lambda: pa.concat_tables(tables))
    phases["listing: the driver joins the tasks' tables"] = (
        "once",
        measured,
        f"{len(tables)} folders, {listing.nbytes / 1e6:.0f} MB",
    )
    source = simulated_source(root)
    measured, plan = measure(lambda: make_plan(store, source, listing, config))
    phases["plan: label, sort, shuffle, cut, write"] = ("once", measured, "")
    listing = None  # the plan holds what the shard tasks need
    measured, slices = measure(lambda: sum(1 for _ in shard_slices(plan)))
    phases["shard tasks' slices of the plan"] = ("once", measured, f"{slices} shards")
    manifest = manifest_of(plan.info, config.shard_rows)
    measured, _ = measure(lambda: store.write_manifest(manifest))
    size = (output / "manifest.json").stat().st_size
    phases["manifest write"] = ("once", measured, f"{size / 1e6:.2f} MB")
    measured, shards = measure(lambda: ShardStore(str(output)).shards("train"))
    phases["manifest read"] = ("once", measured, f"{len(shards)} training shards")
    augmentation = TrainingAugmentation(256, 224)
    for workers in (8, 64):
        measured, _ = measure(
            lambda workers=workers: epoch_assignment(shards, seed=0, epoch=1, world_size=workers)
        )
        phases[f"epoch_assignment, {workers} workers"] = ("epoch", measured, "each worker")
        measured, _ = measure(
            lambda workers=workers: training_dataset(
                str(output), epoch=1, rank=0, world_size=workers, augmentation=augmentation
            )
        )
        phases[f"epoch dataset, {workers} workers"] = ("epoch", measured, "each worker, rank 0")
    # A training worker plans the whole run's stream at its start: every epoch.
    epochs = TrainConfig().epochs
    measured, _ = measure(
        lambda: training_dataset(
            str(output),
            epoch=0,
            stop_epoch=epochs,
            rank=0,
            world_size=8,
            augmentation=augmentation,
        )
    )
    phases[f"run's dataset, {epochs} epochs, 8 workers"] = ("once", measured, "each worker, rank 0")
    measured, _ = measure(
        lambda: evaluation_dataset(str(output), scale=256, view="dense", rank=0, world_size=8)
    )
    phases["evaluation dataset, val, 8 workers"] = ("once", measured, "per scale Q")
    measured, stages = measure(lambda: _workflow_plan(str(root)))
    phases["workflow plan (paper)"] = ("once", measured, f"{stages} stages")
    return phases


def _workflow_plan(data: str) -> int:
    from pipeline.recipes import workflow_recipe
    from pipeline.workflow import plan

    return len(plan(workflow_recipe("paper", [f"data={data}"])))


def budget_seconds(kind: str, train: int) -> float:
    epoch = train / GPU_IMAGES_PER_SECOND
    return epoch * (PER_EPOCH_SHARE if kind == "epoch" else ONCE_SHARE)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_281_167, help="training images")
    parser.add_argument("--val", type=int, default=None, help="validation images (ILSVRC's share)")
    parser.add_argument("--compare", type=int, default=None, help="a tenth of --images")
    args = parser.parse_args(argv)
    val = args.val if args.val is not None else round(args.images * 50_000 / 1_281_167)
    compare = args.compare or max(1, args.images // 10)
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:  # the dataset phases need a Ray to plan against; it runs nothing
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="vggpipe-scale-") as scratch:
            small = run_phases(compare, round(val * compare / args.images), Path(scratch))
            large = run_phases(args.images, val, Path(scratch))
    finally:
        if started_ray:
            ray.shutdown()
    epoch = args.images / GPU_IMAGES_PER_SECOND
    print(
        f"{args.images:,} training and {val:,} validation images (growth from {compare:,}); "
        f"budget: one epoch on 8 GPUs at {GPU_IMAGES_PER_SECOND // 8:,} images/s each = "
        f"{epoch:.0f} s; per-epoch phases {PER_EPOCH_SHARE:.0%} of it "
        f"({epoch * PER_EPOCH_SHARE:.2f} s), once-per-run phases {ONCE_SHARE:.0%} "
        f"({epoch * ONCE_SHARE:.2f} s); driver memory {MEMORY_BUDGET >> 20} MiB each; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "phase | runs | seconds | CPU seconds | peak MB | growth in seconds (x"
        f"{args.images / compare:.0f} images) | budget s | within | note"
    )
    print("--- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---")
    results: dict[str, float] = {}
    over = []
    for name, (kind, measured, note) in large.items():
        before = small[name][1]
        budget = budget_seconds(kind, args.images)
        within = measured.seconds <= budget and measured.peak_bytes <= MEMORY_BUDGET
        if not within:
            over.append(name)
        growth = measured.seconds / before.seconds if before.seconds > 0 else float("nan")
        print(
            f"{name} | {'every epoch' if kind == 'epoch' else 'once'} | {measured.seconds:.3f} | "
            f"{measured.cpu_seconds:.3f} | "
            f"{measured.peak_bytes / 1e6:.0f} | {growth:.1f}x | {budget:.2f} | "
            f"{'yes' if within else 'NO'} | {note}"
        )
        results[f"{name} seconds"] = measured.seconds
        results[f"{name} peak bytes"] = float(measured.peak_bytes)
    print("all phases within the budget" if not over else f"over the budget: {', '.join(over)}")
    results["over budget"] = float(len(over))
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["over budget"] else 0)
