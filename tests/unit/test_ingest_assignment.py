"""The per-epoch assignment of shard rows to workers, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.manifest import ShardInfo
from pipeline.shard_datasource import Piece, epoch_assignment, epoch_tasks, record_batch_pieces
from pipeline.shards import SHARD_BATCH_ROWS


def _shards(*rows: int) -> list[ShardInfo]:
    return [ShardInfo("train", f"train/s{i}.arrow", n, "", 0) for i, n in enumerate(rows)]


def _rows(pieces: list[Piece]) -> list[tuple[str, int]]:
    return [(p.shard, r) for p in pieces for r in range(p.start, p.stop)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_every_row_goes_to_exactly_one_worker_in_equal_shares(world_size):
    shards = _shards(1000, 1000, 437)
    total = 2437
    assignment = epoch_assignment(shards, seed=0, epoch=0, world_size=world_size)
    per_worker = [_rows(pieces) for pieces in assignment]
    assert [len(rows) for rows in per_worker] == [total // world_size] * world_size
    every = [row for rows in per_worker for row in rows]
    assert len(set(every)) == len(every) == total - total % world_size


def test_order_changes_per_epoch_and_repeats_per_seed():
    shards = _shards(1000, 1000, 1000)

    def order(seed, epoch):
        return [_rows(p) for p in epoch_assignment(shards, seed=seed, epoch=epoch, world_size=2)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    # Over epochs a row does not stay with one worker.
    worker0 = [set(order(0, epoch)[0]) for epoch in range(4)]
    assert len(set.intersection(*worker0)) < 0.5 * len(worker0[0])


def test_record_batch_pieces_follow_the_writer_batches():
    pieces = record_batch_pieces(_shards(SHARD_BATCH_ROWS * 2 + 5))
    assert [(p.start, p.stop) for p in pieces] == [
        (0, SHARD_BATCH_ROWS),
        (SHARD_BATCH_ROWS, 2 * SHARD_BATCH_ROWS),
        (2 * SHARD_BATCH_ROWS, 2 * SHARD_BATCH_ROWS + 5),
    ]


def test_epoch_tasks_cut_the_share_and_seed_each_task_by_epoch_rank_and_place():
    shards = _shards(1000, 1000, 437)
    share = epoch_assignment(shards, seed=3, epoch=2, world_size=2)[1]
    tasks = epoch_tasks(shards, seed=3, epoch=2, rank=1, world_size=2, rows_per_task=300)
    assert [row for task in tasks for row in _rows(list(task.pieces))] == _rows(share)
    assert [task.seed_words for task in tasks] == [(3, 2, 1, i) for i in range(len(tasks))]
    # Cut to its first rows (whole steps): the same rows in the same tasks, fewer.
    cut = epoch_tasks(shards, seed=3, epoch=2, rank=1, world_size=2, rows=500, rows_per_task=300)
    assert sum(task.rows for task in cut) == 500
    assert [row for task in cut for row in _rows(list(task.pieces))] == _rows(share)[:500]


def test_rebatch_cuts_blocks_into_batches_joining_only_across_blocks():
    from pipeline.batches import rebatch

    sizes = [64, 64, 37, 64, 5]
    starts = np.cumsum([0, *sizes[:-1]])
    blocks = [
        {"label": np.arange(s, s + n), "image": np.arange(s, s + n) * 10}
        for s, n in zip(starts, sizes, strict=True)
    ]
    batches = list(rebatch(iter(blocks), 32))
    assert [len(b["label"]) for b in batches] == [32] * 7 + [10]
    assert np.array_equal(np.concatenate([b["label"] for b in batches]), np.arange(sum(sizes)))
    assert np.array_equal(np.concatenate([b["image"] for b in batches]), np.arange(sum(sizes)) * 10)
    # Batches inside one block are views of it, no copy; the one across blocks 2 and 3 is joined.
    assert np.shares_memory(batches[1]["image"], blocks[0]["image"])
    assert np.shares_memory(batches[4]["image"], blocks[2]["image"])
    assert not np.shares_memory(batches[5]["image"], blocks[2]["image"])


def test_rebatch_closes_its_source_when_the_consumer_stops():
    from pipeline.batches import rebatch

    closed = []

    def source():
        try:
            while True:
                yield {"label": np.arange(8)}
        finally:
            closed.append(True)

    batches = rebatch(source(), 4)
    next(batches)
    batches.close()
    assert closed == [True]


def test_a_read_task_of_no_rows_is_refused_before_the_shards_are_read(tmp_path):
    from pipeline.ingest import training_dataset
    from vgg.transforms import TrainingAugmentation

    with pytest.raises(ValueError, match="rows_per_task must be at least 1; got 0"):
        training_dataset(
            str(tmp_path / "no-such-dataset"),
            epoch=0,
            rank=0,
            world_size=1,
            augmentation=TrainingAugmentation(256, 224),
            rows_per_task=0,
        )
