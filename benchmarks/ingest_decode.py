"""The in-process decode that `benchmarks.ingest` compares Ray Data with, and
what the same cores give without Ray Data's executor: a thread pool, forked
processes, plain Ray tasks, and the read tasks themselves run as plain Ray
tasks (`plain_read_tasks_rate`), with and without putting their blocks in the
object store. Together they say where a Ray Data figure loses against one
process: the machine's own scaling over several busy cores, the object store
copy, or Ray Data's scheduling."""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from vgg.transforms import TrainingAugmentation, decode_crop

CROP = 224


def shard_rows(shards: str) -> list[tuple[bytes, int, int]]:
    from pipeline.shards import ShardStore

    store = ShardStore(shards)
    rows = []
    for shard in store.shards("train"):
        table = store.read_shard(shard, ["image", "height", "width"])
        rows += zip(
            table["image"].to_pylist(),
            table["height"].to_pylist(),
            table["width"].to_pylist(),
            strict=True,
        )
    return rows


def ours_rate(rows, scale, batch: int) -> tuple[float, float]:
    """The training augmentation's CPU half in one process: draw, then decode.
    Images per second of wall time, and per CPU-second."""
    augmentation = TrainingAugmentation(scale, CROP)
    rng = np.random.default_rng(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    for first in range(0, len(rows), batch):
        jpegs, heights, widths = zip(*rows[first : first + batch], strict=True)
        augmentation.decode(jpegs, augmentation.draw(heights, widths, rng))
    return len(rows) / (time.perf_counter() - start), len(rows) / (time.process_time() - cpu_start)


def threaded_rate(rows, scale, threads: int) -> float:
    """`ours_rate`'s decode spread over `threads` threads of one process (what a
    user might try before Ray Data): images per second of wall time, all threads."""
    from concurrent.futures import ThreadPoolExecutor

    augmentation = TrainingAugmentation(scale, CROP)
    jpegs, heights, widths = zip(*rows, strict=True)
    boxes = augmentation.draw(heights, widths, np.random.default_rng(0))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(decode_crop, jpegs, boxes):
            pass
    return len(rows) / (time.perf_counter() - start)


_FORKED_ROWS: list = []


def _decode_every(part: int, parts: int, scale) -> int:
    augmentation = TrainingAugmentation(scale, CROP)
    rows = _FORKED_ROWS[part::parts]
    jpegs, heights, widths = zip(*rows, strict=True)
    boxes = augmentation.draw(heights, widths, np.random.default_rng(part))
    for data, box in zip(jpegs, boxes, strict=True):
        decode_crop(data, box)
    return len(rows)


def processes_rate(rows, scale, processes: int) -> float:
    """`ours_rate`'s decode split over `processes` forked processes, no Ray: the
    most the cores give together with nothing in between. Images per second of
    wall time, all processes, their start excluded."""
    import multiprocessing

    global _FORKED_ROWS
    _FORKED_ROWS = rows
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.starmap(_decode_every, [(0, len(rows), scale)] * processes)  # started, warm
        start = time.perf_counter()
        count = sum(pool.starmap(_decode_every, [(i, processes, scale) for i in range(processes)]))
        return count / (time.perf_counter() - start)


def ray_tasks_rate(rows, scale, batch: int, cores: int) -> float:
    """`ours_rate` in `cores` plain Ray tasks of one CPU at once, the rows split
    evenly (no Ray Data, no shards read): what Ray's worker processes decode on
    busy cores, beside Ray's own daemons. Images per second of wall time per
    core, from submission to the last task's end, the workers warmed first."""
    import ray

    @ray.remote(num_cpus=1)
    def in_a_task(rows, warm: bool) -> int:
        torch.set_num_threads(1)
        ours_rate(rows[:200] if warm else rows, scale, batch)
        return len(rows)

    parts = [ray.put(rows[i::cores]) for i in range(cores)]
    ray.get([in_a_task.remote(part, True) for part in parts])  # imports, first decodes
    start = time.perf_counter()
    count = sum(ray.get([in_a_task.remote(part, False) for part in parts]))
    return count / (time.perf_counter() - start) / cores


def decode_only_rate(rows) -> float:
    start = time.perf_counter()
    for data, _, _ in rows:
        Image.open(io.BytesIO(data)).convert("RGB").load()
    return len(rows) / (time.perf_counter() - start)


def plain_read_tasks_rate(shards: str, scale, cores: int, *, epoch: int, store: bool) -> float:
    """One epoch's training rows as about `cores` read tasks of about equal
    size (whole record batches each; `ShardRowsDatasource`, what Ray Data
    runs: read, shuffle, draw, decode), each in a plain Ray task of one CPU,
    outside Ray Data: no scheduling loop, no pause between read tasks, no
    consumer, and no core idle for long while another finishes a larger share.
    Their blocks are dropped, or with `store` put in the object store one by
    one: the same bytes Ray Data's read tasks put there, in its larger blocks.
    Images per second of wall time per core, from submission to the last
    task's end."""
    import ray

    from pipeline.shard_datasource import ShardRowsDatasource, epoch_tasks
    from pipeline.shards import ShardStore

    shard_list = ShardStore(shards).shards("train")
    rows = sum(shard.rows for shard in shard_list)
    tasks = epoch_tasks(
        shard_list, seed=0, epoch=epoch, rank=0, world_size=1, rows_per_task=-(-rows // cores)
    )
    source = ShardRowsDatasource(
        shards,
        tasks,
        augmentation=TrainingAugmentation(scale, CROP),
        shuffle=True,
        decode=True,
    )
    read_tasks = source.get_read_tasks(len(tasks))

    @ray.remote(num_cpus=1)
    def run(read_task) -> int:
        torch.set_num_threads(1)
        count = 0
        for block in read_task():
            count += block.num_rows
            if store:
                ray.put(block)
        return count

    start = time.perf_counter()
    decoded = sum(ray.get([run.remote(read_task) for read_task in read_tasks]))
    wall = time.perf_counter() - start
    if decoded != rows:  # a rate over rows that were not all decoded would flatter
        raise RuntimeError(f"the plain read tasks decoded {decoded} rows of {rows}")
    return rows / wall / cores
