"""One shard task's work: read the shard's images straight from the source (a
ranged read per image, even inside the tars, so nothing is extracted or copied
twice), process each, and write the shard under a temporary name before
renaming it. A shard an earlier run of the same plan finished is kept.

A training shard's task also sums the colour statistics' pixel moments over
its sample (its first rows, which the seeded order makes a random sample),
from the pixels it encodes: no second decoding pass, no idle phase."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from pipeline.manifest import Rejection, ShardInfo
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.image import ImageRejected, ProcessedImage, process_image
from pipeline.preprocess.plan import finished_shard
from pipeline.shards import ShardStore
from pipeline.sources import SourceReader
from pipeline.stats import PixelMoments, image_moments, pixel_moments

# Shard tasks report progress at most this often (seconds): often enough for a
# smooth bar, rarely enough that the driver's handling of the reports takes
# no noticeable share of the CPUs the shard tasks share with it.
PROGRESS_SECONDS = 0.5


@dataclass(frozen=True)
class ShardResult:
    info: ShardInfo
    rejected: list[Rejection]
    images_processed: int  # 0 for a shard kept from an earlier run
    written: bool
    cpu_seconds: float = 0.0  # the task's process CPU time: read, decode, encode, write
    # Colour-statistics moments of the shard's sample (`sample_rows`)
    moments: PixelMoments | None = None


def sample_rows(rows: int, fraction: float) -> int:
    """How many of a shard's first rows the colour statistics sample."""
    return math.ceil(rows * fraction)


def ensure_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
    stats_fraction: float = 0.0,
) -> Iterator[int | ShardResult]:
    """Write one shard of the plan, unless an earlier run of the same plan did.

    Yields the number of images done every half second or so, then the
    ShardResult. `rows` is the shard's slice of the plan (key, label, path,
    offset, size); the colour statistics sample `stats_fraction` of its rows.
    """
    found = finished_shard(store, split, index, count, plan_id)
    if found is not None:
        info, rejected = found
        yield rows.num_rows
        moments = None
        if stats_fraction > 0:
            # The kept shard's sample, from its stored images (a rerun only):
            # the same rows the shard's own task sampled.
            refused = {rejection.key for rejection in rejected}
            planned = rows["key"].to_pylist()[: sample_rows(rows.num_rows, stats_fraction)]
            stored = sum(key not in refused for key in planned)
            images = store.read_rows(info, 0, stored, ["image"])["image"] if stored else []
            moments = image_moments(value.as_py() for value in images)
        yield ShardResult(info, rejected, 0, written=False, moments=moments)
        return
    yield from write_shard(
        reader, store, split, index, count, rows, config, plan_id, stats_fraction
    )


def write_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
    stats_fraction: float = 0.0,
) -> Iterator[int | ShardResult]:
    cpu_started = time.process_time()
    keys = rows["key"].to_pylist()
    labels = rows["label"].to_pylist()
    paths = rows["path"].to_pylist()
    offsets = rows["offset"].to_pylist()
    sizes = rows["size"].to_pylist()
    # Read in file order (sequential within a tar), store in plan order.
    read_order = sorted(range(len(keys)), key=lambda i: (paths[i], offsets[i]))
    images: list[ProcessedImage | None] = [None] * len(keys)
    rejected: list[Rejection] = []
    # The sample: the shard's first rows in plan order, those rejected left out.
    sampled = sample_rows(len(keys), stats_fraction)
    moments = PixelMoments.zero() if sampled else None
    since_report, last_report = 0, time.perf_counter()
    data_in_order = reader.read(
        [paths[i] for i in read_order],
        [offsets[i] for i in read_order],
        [sizes[i] for i in read_order],
    )
    for i, data in zip(read_order, data_in_order, strict=True):
        try:
            image = process_image(
                data, config.max_short_side, config.jpeg_quality, keep_pixels=i < sampled
            )
        except ImageRejected as exc:
            rejected.append(Rejection(split, keys[i], str(exc)))
        else:
            if image.pixels is not None:
                moments += pixel_moments(image.pixels)
                image = ProcessedImage(image.data, image.width, image.height)
            images[i] = image
        since_report += 1
        if time.perf_counter() - last_report >= PROGRESS_SECONDS:
            yield since_report
            since_report, last_report = 0, time.perf_counter()
    kept = [i for i, image in enumerate(images) if image is not None]
    table = pa.table(
        {
            "key": [keys[i] for i in kept],
            "label": [labels[i] for i in kept],
            "image": [images[i].data for i in kept],
            "height": [images[i].height for i in kept],
            "width": [images[i].width for i in kept],
        }
    )
    rejected.sort(key=lambda r: r.key)
    metadata = {
        "plan_id": plan_id,
        "rejected": [{"key": r.key, "reason": r.reason} for r in rejected],
    }
    info = store.write_shard(split, index, count, table, metadata)
    if since_report:
        yield since_report
    cpu_seconds = time.process_time() - cpu_started
    yield ShardResult(
        info, rejected, len(keys), written=True, cpu_seconds=cpu_seconds, moments=moments
    )
