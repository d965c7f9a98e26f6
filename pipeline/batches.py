"""From Ray Data's blocks to the torch batches a worker trains or validates on.

Ray Data can batch and convert by itself (`iter_torch_batches`), but for
decoded crops each of its steps copies every image: blocks arrive as tables of
many record batches, and its NumPy conversion and re-batching first join them.
Here whole blocks are taken as Arrow tables, turned into NumPy one record batch
at a time (zero-copy views of the object store) and cut into batches
(`rebatch`); only a batch that spans two record batches is joined.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import NumpyBatchCollateFn


def on_device(batch: dict[str, object], device: torch.device | str) -> dict[str, object]:
    batch["image"] = batch["image"].to(device, non_blocking=True)
    batch["label"] = batch["label"].to(device, non_blocking=True)
    return batch


def crop_tensors(batch: dict[str, np.ndarray]) -> dict[str, object]:
    """A NumPy batch of crops as {"image": uint8 NHWC tensor, "label": int64
    tensor, "key": list}. The image tensor shares the array's memory, which for
    a batch straight from Ray's object store is read-only: consumers make new
    tensors (the move to the device, the float conversion), never write into it."""
    with warnings.catch_warnings():
        # A copy of every batch only to make it writable would take CPU time
        # from the read tasks on the same cores.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        image = torch.from_numpy(np.ascontiguousarray(batch["image"]))
    return {
        "image": image,
        "label": torch.tensor(batch["label"], dtype=torch.int64),
        "key": batch["key"].tolist(),
    }


class CropBatchCollate(NumpyBatchCollateFn):
    """`crop_tensors` as a Ray Data collate function."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, object]:
        return crop_tensors(batch)


def rebatch(blocks: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict]:
    """NumPy blocks cut into batches of `batch_size` rows (the last may be
    short): slices of one block where a batch lies within it, joined only where
    it spans blocks. Why not Ray Data's own batching (`iter_batches(batch_size=)`):
    it joins every block's crops into one array first, CPU time the training
    process takes from the read tasks on the same cores (`benchmarks/ingest.py`
    reports the consumer's CPU time per image)."""
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    try:
        for block in blocks:
            rows = len(next(iter(block.values())))
            start = 0
            while start < rows:
                take = min(batch_size - pending_rows, rows - start)
                pending.append(
                    {name: column[start : start + take] for name, column in block.items()}
                )
                pending_rows, start = pending_rows + take, start + take
                if pending_rows == batch_size:
                    yield _joined(pending)
                    pending, pending_rows = [], 0
        if pending:
            yield _joined(pending)
    finally:
        _close(blocks)


def record_batches_as_numpy(tables: Iterator) -> Iterator[dict[str, np.ndarray]]:
    """Each record batch of each table as NumPy columns, zero-copy for the crops.
    A read task's blocks reach the consumer as tables of many record batches
    (Ray Data gathers a task's small yields into blocks of up to
    `target_max_block_size`); Ray's own NumPy conversion of such a table first
    copies all of its crops into one array, one record batch at a time needs no copy."""
    from ray.data.block import BlockAccessor

    try:
        for table in tables:
            for record_batch in table.to_batches():
                single = pa.Table.from_batches([record_batch])
                yield BlockAccessor.for_block(single).to_batch_format("numpy")
    finally:
        _close(tables)


def _close(source: Iterator) -> None:
    """End the source a generator here was reading, when it can be ended (Ray
    Data's iterators release their stream that way), however the reading stopped."""
    close = getattr(source, "close", None)
    if close is not None:
        close()


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
