"""From Arrow shards to augmented batches on every training worker.

Ray has no Arrow IPC reader, so `ShardRowsDatasource` reads row ranges of the
shards through Ray Data's datasource API; decoding and cropping run as Ray
Data tasks on whatever CPUs the cluster has, and each training worker receives
uint8 crops to finish on its own device. What is drawn, decoded and finished
is `vgg.transforms.TrainingAugmentation`, passed through here as one object.

Why each worker builds its own epoch dataset instead of taking a split of one
shared dataset (`ray.train.get_dataset_shard`): Ray Data's streaming split hands
blocks to whichever worker asks first and re-runs the same plan every epoch, so
it can give neither an order that changes per epoch nor one that repeats for a
seed. Here the epoch's order is a pure function of (seed, epoch): record
batches of the shards (rows within a shard are already in a seeded random
order) are permuted, cut into `world_size` equal contiguous runs, and each
worker reads its run, rows shuffled within each read task. Every image goes to
exactly one worker per epoch; the `len % world_size` rows left over, and each
worker's last partial batch, wait for the next epoch's permutation.
Evaluation has no such need and uses `get_dataset_shard` / plain datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from ray.data import Datasource
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline.errors import ConfigError
from pipeline.manifest import ShardInfo
from pipeline.shards import SHARD_BATCH_ROWS, ShardStore
from vgg.transforms import (
    PixelStatistics,
    TrainingAugmentation,
    center_crop_box,
    decode_crop,
    decode_rescaled,
)


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


def _group(pieces: list[Piece], rows_per_task: int) -> list[list[Piece]]:
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


class ShardRowsDatasource(Datasource):
    """A Ray Data datasource over chosen row ranges of the shards: one read task
    per group of pieces, in the given order. For training it also draws each
    row's crop (`augmentation.draw`) from a seeded generator per task, so the
    augmentation repeats for a seed whatever Ray's batching and scheduling do."""

    def __init__(
        self,
        dataset_uri: str,
        tasks: list[list[Piece]],
        *,
        augmentation: TrainingAugmentation | None = None,
        seed_words: tuple[int, ...] = (0,),
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        self.dataset_uri = dataset_uri
        self.tasks = tasks
        self.augmentation = augmentation
        self.seed_words = seed_words
        self.shuffle = shuffle

    def get_name(self) -> str:
        return "ArrowShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        read_tasks = []
        for index, pieces in enumerate(self.tasks):
            metadata = BlockMetadata(
                num_rows=sum(p.rows for p in pieces),
                size_bytes=None,
                input_files=tuple(sorted({p.shard for p in pieces})),
                exec_stats=None,
            )
            read_tasks.append(
                ReadTask(
                    lambda pieces=pieces, index=index: [self._read(pieces, index)],
                    metadata,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return read_tasks

    def _read(self, pieces: list[Piece], index: int) -> pa.Table:
        store = ShardStore(self.dataset_uri)
        columns = ["key", "label", "image", "height", "width"]
        table = pa.concat_tables(
            [store.read_rows(p.shard, p.start, p.stop, columns) for p in pieces]
        )
        rng = _rng(*self.seed_words, index)
        if self.shuffle:
            table = table.take(rng.permutation(table.num_rows))
        if self.augmentation is not None:
            boxes = self.augmentation.draw(
                table["height"].to_numpy(), table["width"].to_numpy(), rng
            )
            for name, column in self.augmentation.encode(boxes).items():
                table = table.append_column(name, pa.array(column))
        return table


def decode_training_crops(
    batch: dict[str, np.ndarray], augmentation: TrainingAugmentation
) -> dict[str, np.ndarray]:
    """Ray Data map: JPEG bytes and drawn boxes to uint8 crops (N, crop, crop, 3)."""
    images = augmentation.decode(batch["image"], augmentation.decode_boxes(batch))
    return {"image": images, "label": batch["label"].astype(np.int64), "key": batch["key"]}


def training_dataset(
    dataset_uri: str,
    *,
    epoch: int,
    rank: int,
    world_size: int,
    augmentation: TrainingAugmentation,
    seed: int = 0,
    decode: bool = True,
    rows_per_task: int = 512,
    decode_batch_rows: int = 64,
    cpus_per_task: float = 1.0,
):
    """Worker `rank`'s training rows for `epoch` as a Ray Data dataset, in a
    seeded order. With `decode` the rows are uint8 crops ready for the device;
    without, JPEG bytes and each row's drawn box (for decoding on a GPU)."""
    import ray.data

    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
    store = ShardStore(dataset_uri)
    pieces = epoch_assignment(store.shards("train"), seed=seed, epoch=epoch, world_size=world_size)[
        rank
    ]
    source = ShardRowsDatasource(
        dataset_uri,
        _group(pieces, rows_per_task),
        augmentation=augmentation,
        seed_words=(seed, epoch, rank),
        shuffle=True,
    )
    context = ray.data.DataContext.get_current()
    # The epoch's order is the plan above; Ray must not reorder finished blocks.
    context.execution_options.preserve_order = True
    dataset = ray.data.read_datasource(
        source,
        override_num_blocks=max(1, len(source.tasks)),
        num_cpus=cpus_per_task,
    )
    if not decode:
        return dataset
    return dataset.map_batches(
        decode_training_crops,
        fn_kwargs={"augmentation": augmentation},
        batch_size=decode_batch_rows,
        batch_format="numpy",
        num_cpus=cpus_per_task,
    )


def _on_device(batch: dict[str, object], device: torch.device | str) -> dict[str, object]:
    batch["image"] = batch["image"].to(device, non_blocking=True)
    batch["label"] = batch["label"].to(device, non_blocking=True)
    return batch


class CropBatchCollate(NumpyBatchCollateFn):
    """Numpy batch to {"image": uint8 NHWC tensor, "label": int64 tensor, "key": list}."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, object]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(batch["image"])),
            "label": torch.tensor(batch["label"], dtype=torch.int64),
            "key": batch["key"].tolist(),
        }


def training_batches(
    dataset_uri: str,
    *,
    epoch: int,
    rank: int,
    world_size: int,
    augmentation: TrainingAugmentation,
    batch_size: int,
    seed: int = 0,
    decode_on: str = "cpu",
    device: torch.device | str = "cpu",
    prefetch_batches: int = 2,
    cpus_per_task: float = 1.0,
) -> Iterator[dict[str, object]]:
    """One epoch of worker `rank`'s batches: {"image": uint8 NHWC on `device`,
    "label": int64, "key": list of str}; the last partial batch is dropped.

    decode_on="cpu" decodes in Ray Data tasks on the cluster's CPUs;
    decode_on="device" ships the JPEG bytes and decodes on `device` with
    torchvision's decoder (nvJPEG on a GPU), so the CPUs only read bytes."""
    if decode_on not in ("cpu", "device"):
        raise ValueError(f"decode_on must be 'cpu' or 'device'; got {decode_on!r}")
    dataset = training_dataset(
        dataset_uri,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        augmentation=augmentation,
        seed=seed,
        decode=decode_on == "cpu",
        cpus_per_task=cpus_per_task,
    )
    if decode_on == "cpu":
        for batch in dataset.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            collate_fn=CropBatchCollate(),
            prefetch_batches=prefetch_batches,
        ):
            yield _on_device(batch, device)
        return
    for batch in dataset.iter_batches(
        batch_size=batch_size,
        drop_last=True,
        batch_format="numpy",
        prefetch_batches=prefetch_batches,
    ):
        yield {
            "image": augmentation.decode_on_device(
                batch["image"], augmentation.decode_boxes(batch), device
            ),
            "label": torch.tensor(batch["label"], dtype=torch.int64, device=device),
            "key": batch["key"].tolist(),
        }


def pixel_statistics(dataset_uri: str) -> PixelStatistics:
    """The manifest's training-set statistics in the units `vgg.transforms` uses."""
    statistics = ShardStore(dataset_uri).manifest().statistics
    if statistics is None:
        raise ConfigError(f"{dataset_uri}: the manifest has no pixel statistics")
    return PixelStatistics(
        mean_rgb=tuple(statistics.mean_rgb),
        # The manifest keeps 0-255 units; the colour shift's eigenvalues are for
        # values in [0, 1] (see vgg.transforms).
        eigenvalues=tuple(v / 255.0**2 for v in statistics.eigenvalues),
        eigenvectors=tuple(tuple(v) for v in statistics.eigenvectors),
    )


# ---------------------------------------------------------------------------
# Evaluation: whole images at a test scale, or their centre crops.

EVALUATION_VIEWS = ("centre", "dense")


def _evaluation_views(
    batch: dict[str, np.ndarray], scale: int, view: str, crop_size: int
) -> dict[str, np.ndarray]:
    if view == "centre":
        boxes = [
            center_crop_box(int(h), int(w), scale, crop_size)
            for h, w in zip(batch["height"], batch["width"], strict=True)
        ]
        crops = [decode_crop(data, box) for data, box in zip(batch["image"], boxes, strict=True)]
        out = {"image": np.stack(crops)}
    else:
        images = [decode_rescaled(data, scale) for data in batch["image"]]
        # Ragged: dense evaluation takes each image at its own size.
        ragged = np.empty(len(images), dtype=object)
        for i, image in enumerate(images):
            ragged[i] = image
        out = {
            "image": ragged,
            "height": np.array([i.shape[0] for i in images], np.int32),
            "width": np.array([i.shape[1] for i in images], np.int32),
        }
    return {**out, "label": batch["label"].astype(np.int64), "key": batch["key"]}


def evaluation_dataset(
    dataset_uri: str,
    *,
    scale: int,
    view: str = "dense",
    split: str = "val",
    crop_size: int = 224,
    rank: int = 0,
    world_size: int = 1,
    rows_per_task: int = 256,
    decode_batch_rows: int = 16,
    cpus_per_task: float = 1.0,
):
    """The `split` images at test scale Q = `scale` as a Ray Data dataset.

    view="centre": the centre crop_size crop ("image"), training's validation;
    view="dense": each whole image with its shorter side Q ("image", variable
    size, plus "height" and "width" so evaluation can batch equal sizes); the
    evaluation stage cuts its centre and multi-crop views from these arrays
    (`pipeline.evaluation.worker`), so each image is decoded once per Q.
    Labels and keys attached. With `world_size` > 1 the record batches are
    dealt out and this is worker `rank`'s share."""
    import ray.data

    if view not in EVALUATION_VIEWS:
        raise ValueError(f"view must be one of {', '.join(EVALUATION_VIEWS)}; got {view!r}")
    if view != "dense" and scale < crop_size:
        raise ValueError(f"{view} needs scale >= crop_size {crop_size}; got {scale}")
    store = ShardStore(dataset_uri)
    pieces = record_batch_pieces(store.shards(split))[rank::world_size]
    source = ShardRowsDatasource(dataset_uri, _group(pieces, rows_per_task))
    dataset = ray.data.read_datasource(
        source,
        override_num_blocks=max(1, len(source.tasks)),
        num_cpus=cpus_per_task,
    )
    return dataset.map_batches(
        _evaluation_views,
        fn_kwargs={"scale": scale, "view": view, "crop_size": crop_size},
        batch_size=decode_batch_rows,
        batch_format="numpy",
        num_cpus=cpus_per_task,
    )


def validation_batches(
    dataset_uri: str,
    *,
    scale: int,
    crop_size: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "val",
    device: torch.device | str = "cpu",
    cpus_per_task: float = 1.0,
) -> Iterator[dict[str, object]]:
    """Worker `rank`'s share of the centre crops at test scale `scale`, as uint8
    NHWC batches on `device` (the last batch may be short: nothing is dropped)."""
    dataset = evaluation_dataset(
        dataset_uri,
        scale=scale,
        view="centre",
        split=split,
        crop_size=crop_size,
        rank=rank,
        world_size=world_size,
        cpus_per_task=cpus_per_task,
    )
    for batch in dataset.iter_torch_batches(batch_size=batch_size, collate_fn=CropBatchCollate()):
        yield _on_device(batch, device)
