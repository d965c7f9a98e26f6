"""From Arrow shards to augmented batches on every training worker.

Ray has no Arrow IPC reader, so `pipeline.shard_datasource` reads row ranges
of the shards through Ray Data's datasource API; decoding and cropping run in
those read tasks on whatever CPUs the cluster has, and each training worker receives
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

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline.errors import ConfigError
from pipeline.shard_datasource import (
    ShardRowsDatasource,
    epoch_assignment,
    group_pieces,
    record_batch_pieces,
)
from pipeline.shards import ShardStore
from vgg.transforms import (
    PixelStatistics,
    TrainingAugmentation,
    center_crop_box,
    decode_crop,
    decode_rescaled,
)


def training_dataset(
    dataset_uri: str,
    *,
    epoch: int,
    rank: int,
    world_size: int,
    augmentation: TrainingAugmentation,
    seed: int = 0,
    decode: bool = True,
    rows_per_task: int = 1024,
    decode_batch_rows: int = 64,
    cpus_per_task: float = 1.0,
):
    """Worker `rank`'s training rows for `epoch` as a Ray Data dataset, in a
    seeded order. With `decode` the rows are uint8 crops ready for the device,
    decoded in the read tasks themselves; without, JPEG bytes and each row's
    drawn box (for decoding on a GPU)."""
    import ray.data

    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
    store = ShardStore(dataset_uri)
    pieces = epoch_assignment(store.shards("train"), seed=seed, epoch=epoch, world_size=world_size)[
        rank
    ]
    source = ShardRowsDatasource(
        dataset_uri,
        group_pieces(pieces, rows_per_task),
        augmentation=augmentation,
        seed_words=(seed, epoch, rank),
        shuffle=True,
        decode=decode,
        decode_rows=decode_batch_rows,
    )
    dataset = ray.data.read_datasource(
        source,
        override_num_blocks=max(1, len(source.tasks)),
        num_cpus=cpus_per_task,
    )
    # The epoch's order is the plan above; Ray must not reorder finished blocks.
    # Set on this dataset's own copy of the DataContext (read_datasource took
    # one), not on the process-wide one other datasets share.
    dataset.context.execution_options.preserve_order = True
    return dataset


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
    start_next_epoch: bool = True,
) -> Iterator[dict[str, object]]:
    """One epoch of worker `rank`'s batches: {"image": uint8 NHWC on `device`,
    "label": int64, "key": list of str}; the last partial batch is dropped.

    decode_on="cpu" decodes in Ray Data tasks on the cluster's CPUs;
    decode_on="device" ships the JPEG bytes and decodes on `device` with
    torchvision's decoder (nvJPEG on a GPU), so the CPUs only read bytes.
    With `start_next_epoch`, epoch + 1's dataset starts (same arguments) as
    this one's last read tasks run, so a worker does not wait at the epoch
    boundary; the next call for epoch + 1 takes its batches."""
    if decode_on not in ("cpu", "device"):
        raise ValueError(f"decode_on must be 'cpu' or 'device'; got {decode_on!r}")
    arguments = (
        dataset_uri,
        rank,
        world_size,
        augmentation,
        batch_size,
        seed,
        decode_on,
        prefetch_batches,
        cpus_per_task,
    )
    batches = _EpochPrefetch.take(arguments, epoch)
    if batches is None:
        batches = _epoch_batches(*arguments, epoch=epoch)
    # Every worker's share is the same length (`epoch_assignment`).
    rows = sum(shard.rows for shard in ShardStore(dataset_uri).shards("train")) // world_size
    # Start the next epoch once this one's last read tasks are under way.
    start_at = max(0, rows - 2 * _ROWS_PER_TASK) // batch_size
    for number, batch in enumerate(batches):
        if start_next_epoch and number == start_at:
            _EpochPrefetch.start(arguments, epoch + 1)
        if decode_on == "cpu":
            yield _on_device(batch, device)
        else:
            yield {
                "image": augmentation.decode_on_device(
                    batch["image"], augmentation.decode_boxes(batch), device
                ),
                "label": torch.tensor(batch["label"], dtype=torch.int64, device=device),
                "key": batch["key"].tolist(),
            }


_ROWS_PER_TASK = 1024  # training_dataset's default rows_per_task


def _epoch_batches(
    dataset_uri: str,
    rank: int,
    world_size: int,
    augmentation: TrainingAugmentation,
    batch_size: int,
    seed: int,
    decode_on: str,
    prefetch_batches: int,
    cpus_per_task: float,
    *,
    epoch: int,
) -> Iterator[dict[str, object]]:
    dataset = training_dataset(
        dataset_uri,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        augmentation=augmentation,
        seed=seed,
        decode=decode_on == "cpu",
        rows_per_task=_ROWS_PER_TASK,
        cpus_per_task=cpus_per_task,
    )
    if decode_on == "cpu":
        return dataset.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            collate_fn=CropBatchCollate(),
            prefetch_batches=prefetch_batches,
        )
    return dataset.iter_batches(
        batch_size=batch_size,
        drop_last=True,
        batch_format="numpy",
        prefetch_batches=prefetch_batches,
    )


class _EpochPrefetch:
    """The next epoch's batches, started early in a thread of this process: one
    per process (a training worker), taken by the call that asks for exactly
    that epoch with the same arguments, and dropped otherwise."""

    _pending: tuple[tuple, int, queue.Queue, threading.Event] | None = None

    @classmethod
    def start(cls, arguments: tuple, epoch: int) -> None:
        cls.drop()
        batches: queue.Queue = queue.Queue(maxsize=max(2, arguments[7]))
        stop = threading.Event()

        def fill() -> None:
            try:
                for batch in _epoch_batches(*arguments, epoch=epoch):
                    while not stop.is_set():
                        try:
                            batches.put(batch, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                batches.put(_END)
            except BaseException as exc:  # handed to the consumer, raised there
                batches.put(exc)

        threading.Thread(target=fill, name=f"vggpipe-epoch-{epoch}", daemon=True).start()
        cls._pending = (arguments, epoch, batches, stop)

    @classmethod
    def take(cls, arguments: tuple, epoch: int) -> Iterator[dict[str, object]] | None:
        pending, cls._pending = cls._pending, None
        if pending is None:
            return None
        if pending[:2] != (arguments, epoch):
            pending[3].set()
            return None
        return cls._drain(pending[2], pending[3])

    @classmethod
    def drop(cls) -> None:
        pending, cls._pending = cls._pending, None
        if pending is not None:
            pending[3].set()

    @staticmethod
    def _drain(batches: queue.Queue, stop: threading.Event) -> Iterator[dict[str, object]]:
        try:
            while (item := batches.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()


_END = object()


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
    source = ShardRowsDatasource(dataset_uri, group_pieces(pieces, rows_per_task))
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
