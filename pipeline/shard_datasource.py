"""The shards as a Ray Data datasource: which rows each training worker reads
in an epoch (`epoch_assignment`, a pure function of seed and epoch; see
`pipeline.ingest`), and read tasks over those rows that draw each row's crop
and, for training on the CPU, decode it in the same task."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from ray.data import Datasource

from pipeline.manifest import ShardInfo
from pipeline.shards import SHARD_BATCH_ROWS, ShardStore
from vgg.transforms import TrainingAugmentation


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of one shard (its path relative to the dataset root)."""

    shard: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def record_batch_pieces(shards: list[ShardInfo]) -> list[Piece]:
    """The shards cut at their record batches, the unit a reader can fetch alone."""
    return [
        Piece(shard.path, start, min(start + SHARD_BATCH_ROWS, shard.rows))
        for shard in shards
        for start in range(0, shard.rows, SHARD_BATCH_ROWS)
    ]


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_heap() -> bool:
    """Make glibc keep freed memory for reuse in this process instead of handing
    it back to the kernel; False where malloc is not glibc's (nothing to tune).

    Why: a decoding read task allocates each step's crops (about 10 MB) fresh,
    and Ray holds them until a block fills (up to 128 MiB), then frees them
    together. By default glibc maps allocations that large on their own and
    unmaps them when freed, and trims the heap top, so the next step's crops
    land on new pages that the kernel must zero first (NumPy asks for huge
    pages there: 2 MB zeroed per fault). In `perf` profiles of the ingest
    benchmark that zeroing was the read tasks' largest cost after the JPEG
    decoding; a plain decoding process, which frees each step's crops before
    the next, hardly zeroes at all. With these settings the freed pages are
    reused. The price: an idle Ray worker keeps its peak heap (about one block
    and a step) instead of shrinking."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    # Allocations up to 32 MiB (glibc's ceiling for this) come from the heap ...
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    # ... and the heap keeps up to 1 GiB of free space at its top.
    return mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def epoch_assignment(
    shards: list[ShardInfo], *, seed: int, epoch: int, world_size: int
) -> list[list[Piece]]:
    """Each worker's pieces for one epoch: the record batches permuted with
    (seed, epoch), then cut into `world_size` runs of exactly len // world_size rows."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    pieces = record_batch_pieces(shards)
    order = _rng(seed, epoch).permutation(len(pieces))
    total = sum(p.rows for p in pieces)
    per_worker = total // world_size
    assignment: list[list[Piece]] = [[] for _ in range(world_size)]
    worker, room = 0, per_worker
    for index in order:
        piece = pieces[index]
        start = piece.start
        while start < piece.stop and worker < world_size:
            take = min(room, piece.stop - start)
            assignment[worker].append(Piece(piece.shard, start, start + take))
            start += take
            room -= take
            if room == 0:
                worker, room = worker + 1, per_worker
    return assignment


def group_pieces(pieces: list[Piece], rows_per_task: int) -> list[list[Piece]]:
    """Consecutive pieces gathered into read tasks of about `rows_per_task` rows."""
    groups: list[list[Piece]] = [[]]
    rows = 0
    for piece in pieces:
        if rows >= rows_per_task:
            groups.append([])
            rows = 0
        groups[-1].append(piece)
        rows += piece.rows
    return [g for g in groups if g]


def first_rows(pieces: list[Piece], rows: int) -> list[Piece]:
    """The first `rows` rows of `pieces`, in their order."""
    kept = []
    for piece in pieces:
        if rows <= 0:
            break
        take = min(rows, piece.rows)
        kept.append(Piece(piece.shard, piece.start, piece.start + take))
        rows -= take
    return kept


@dataclass(frozen=True)
class RowTask:
    """One read task: its pieces, and the words that seed its shuffle and crops."""

    pieces: tuple[Piece, ...]
    seed_words: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)


def row_tasks(pieces: list[Piece], rows_per_task: int, *seed_words: int) -> list[RowTask]:
    """`group_pieces` as read tasks, task i seeded by (*seed_words, i)."""
    return [
        RowTask(tuple(group), (*seed_words, index))
        for index, group in enumerate(group_pieces(pieces, rows_per_task))
    ]


def epoch_tasks(
    shards: list[ShardInfo],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    rows_per_task: int,
    rows: int | None = None,
) -> list[RowTask]:
    """Worker `rank`'s read tasks for `epoch`: its `epoch_assignment` share, cut
    to its first `rows` rows (all of it by default), seeded by (seed, epoch,
    rank, task): the same tasks whichever dataset they are part of."""
    pieces = epoch_assignment(shards, seed=seed, epoch=epoch, world_size=world_size)[rank]
    if rows is not None:
        pieces = first_rows(pieces, rows)
    return row_tasks(pieces, rows_per_task, seed, epoch, rank)


@dataclass(frozen=True)
class _RowReader:
    """What a read task needs besides its own rows: small, so that each task
    ships only its own pieces (not the whole plan) to the worker that runs it."""

    dataset_uri: str
    augmentation: TrainingAugmentation | None
    shuffle: bool
    decode: bool
    decode_rows: int

    def blocks(self, task: RowTask) -> Iterator:
        table = self.read(task)
        if not (self.shuffle or self.augmentation is not None):
            yield table
            return
        columns = self.shuffled_columns(table, _rng(*task.seed_words))
        if not self.decode:
            yield pa.table({name: pa.array(column) for name, column in columns.items()})
            return
        from ray.data.block import BlockAccessor

        keep_freed_heap()
        # `decode_rows` crops at a time: Ray Data gathers them into blocks of up
        # to `target_max_block_size` (128 MiB: about 900 crops of 224) before
        # they leave the task, each one a record batch of the block, which
        # `pipeline.batches` cuts into training batches without a copy.
        for start in range(0, table.num_rows, self.decode_rows):
            rows = {
                name: column[start : start + self.decode_rows] for name, column in columns.items()
            }
            yield BlockAccessor.batch_to_block(decode_training_crops(rows, self.augmentation))

    def read(self, task: RowTask) -> pa.Table:
        store = ShardStore(self.dataset_uri)
        columns = ["key", "label", "image", "height", "width"]
        return pa.concat_tables(
            [store.read_rows(p.shard, p.start, p.stop, columns) for p in task.pieces]
        )

    def shuffled_columns(self, table: pa.Table, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The rows as NumPy columns, shuffled (with `shuffle`) and with each
        row's drawn crop box (with an `augmentation`), both from `rng`. Shuffled
        in NumPy, not with `Table.take`: take copies every JPEG's bytes one by
        one, a permutation of the column's references costs nothing."""
        columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
        if self.shuffle:
            order = rng.permutation(table.num_rows)
            columns = {name: column[order] for name, column in columns.items()}
        if self.augmentation is not None:
            boxes = self.augmentation.draw(columns["height"], columns["width"], rng)
            columns.update(self.augmentation.encode(boxes))
        return columns


class ShardRowsDatasource(Datasource):
    """A Ray Data datasource over chosen row ranges of the shards: one read task
    per `RowTask`, in the given order. For training it also draws each row's
    crop (`augmentation.draw`) from the task's seeded generator, so the
    augmentation repeats for a seed whatever Ray's batching and scheduling do;
    with `decode` the read task decodes the crops itself, `decode_rows` at a
    time, so the JPEG bytes never travel between tasks."""

    def __init__(
        self,
        dataset_uri: str,
        tasks: list[RowTask],
        *,
        augmentation: TrainingAugmentation | None = None,
        shuffle: bool = False,
        decode: bool = False,
        decode_rows: int = 64,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.reader = _RowReader(dataset_uri, augmentation, shuffle, decode, decode_rows)

    def get_name(self) -> str:
        return "ArrowShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        return [
            ReadTask(
                functools.partial(self.reader.blocks, task),
                BlockMetadata(
                    num_rows=task.rows,
                    size_bytes=None,
                    input_files=tuple(sorted({p.shard for p in task.pieces})),
                    exec_stats=None,
                ),
                per_task_row_limit=per_task_row_limit,
            )
            for task in self.tasks
        ]


def decode_training_crops(
    batch: dict[str, np.ndarray], augmentation: TrainingAugmentation
) -> dict[str, np.ndarray]:
    """Ray Data map: JPEG bytes and drawn boxes to uint8 crops (N, crop, crop, 3)."""
    images = augmentation.decode(batch["image"], augmentation.decode_boxes(batch))
    return {"image": images, "label": batch["label"].astype(np.int64), "key": batch["key"]}
