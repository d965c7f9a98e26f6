"""One shard task's work: read the shard's images straight from the source (a
ranged read per image, even inside the tars, so nothing is extracted or copied
twice), process each, and write the shard under a temporary name before
renaming it. A shard an earlier run of the same plan finished is kept."""

from __future__ import annotations

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

# Shard tasks report progress every this many images: often enough for a smooth
# bar, rarely enough that the reports cost nothing next to decoding.
PROGRESS_EVERY = 16


@dataclass(frozen=True)
class ShardResult:
    info: ShardInfo
    rejected: list[Rejection]
    images_processed: int  # 0 for a shard kept from an earlier run
    written: bool
    cpu_seconds: float = 0.0  # the task's process CPU time: read, decode, encode, write


def ensure_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
) -> Iterator[int | ShardResult]:
    """Write one shard of the plan, unless an earlier run of the same plan did.

    Yields the number of images done every few images, then the ShardResult.
    `rows` is the shard's slice of the plan (key, label, path, offset, size).
    """
    found = finished_shard(store, split, index, count, plan_id)
    if found is not None:
        info, rejected = found
        yield rows.num_rows
        yield ShardResult(info, rejected, 0, written=False)
        return
    yield from write_shard(reader, store, split, index, count, rows, config, plan_id)


def write_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
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
    since_report = 0
    data_in_order = reader.read(
        [paths[i] for i in read_order],
        [offsets[i] for i in read_order],
        [sizes[i] for i in read_order],
    )
    for i, data in zip(read_order, data_in_order, strict=True):
        try:
            images[i] = process_image(data, config.max_short_side, config.jpeg_quality)
        except ImageRejected as exc:
            rejected.append(Rejection(split, keys[i], str(exc)))
        since_report += 1
        if since_report == PROGRESS_EVERY:
            yield since_report
            since_report = 0
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
    yield ShardResult(info, rejected, len(keys), written=True, cpu_seconds=cpu_seconds)
