"""From Arrow shards to augmented batches on every training worker.

Ray has no Arrow IPC reader, so `pipeline.shard_datasource` reads row ranges
of the shards through Ray Data's datasource API; decoding and cropping run in
those read tasks on whatever CPUs the cluster has, and each training worker receives
uint8 crops to finish on its own device. What is drawn, decoded and finished
is `vgg.transforms.TrainingAugmentation`, passed through here as one object.

Why each worker builds its own dataset of its epochs instead of taking a split of one
shared dataset (`ray.train.get_dataset_shard`): Ray Data's streaming split hands
blocks to whichever worker asks first and re-runs the same plan every epoch, so
it can give neither an order that changes per epoch nor one that repeats for a
seed. Here the epoch's order is a pure function of (seed, epoch): record
batches of the shards (rows within a shard are already in a seeded random
order) are permuted, cut into `world_size` equal contiguous runs, and each
worker reads its run, rows shuffled within each read task. Every image goes to
exactly one worker per epoch; the `len % world_size` rows left over, and each
worker's rows short of a whole step (never read), wait for the next epoch's
permutation. One dataset streams a worker's epochs back to back
(`training_dataset`), so no core waits at an epoch boundary.
Evaluation has no such need and uses `get_dataset_shard` / plain datasets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from pipeline.batches import (
    CropBatchCollate,
    crop_tensors,
    on_device,
    rebatch,
    record_batches_as_numpy,
)
from pipeline.errors import ConfigError
from pipeline.shard_datasource import (
    ShardRowsDatasource,
    epoch_tasks,
    record_batch_pieces,
    row_tasks,
)
from pipeline.shards import ShardStore
from vgg.transforms import (
    PixelStatistics,
    TrainingAugmentation,
    center_crop_box,
    decode_crop,
    decode_rescaled,
)

# Rows per training read task; `training_dataset` says why this many.
TRAINING_ROWS_PER_TASK = 2048


def training_dataset(
    dataset_uri: str,
    *,
    epoch: int,
    rank: int,
    world_size: int,
    augmentation: TrainingAugmentation,
    seed: int = 0,
    decode: bool = True,
    stop_epoch: int | None = None,
    rows_per_epoch: int | None = None,
    rows_per_task: int = TRAINING_ROWS_PER_TASK,
    decode_batch_rows: int = 64,
    cpus_per_task: float = 1.0,
):
    """Worker `rank`'s training rows as a Ray Data dataset: epochs `epoch` up to
    `stop_epoch` (default: `epoch` alone) back to back, each in its seeded order
    and cut to its first `rows_per_epoch` rows (default: the whole share). With
    `decode` the rows are uint8 crops ready for the device, decoded in the read
    tasks themselves; without, JPEG bytes and each row's drawn box (for
    decoding on a GPU).

    One dataset for many epochs, not one per epoch: Ray Data runs it as one
    stream, so the next epoch's read tasks start as soon as this one's leave a
    CPU free; a dataset per epoch left a core idle for an epoch's last task at
    every boundary, and one started early shares the CPUs with the current one
    (Ray Data splits the cluster between running datasets). Read tasks of
    `rows_per_task` rows: Ray Data starts the next task only after a pause
    (its scheduling loop polls finished tasks; see `ray.timeline()`), so the
    larger the task, the less of that pause per image; but under the seeded
    order a later task's finished blocks wait for the earlier task's, so the
    larger the task, the more of them wait on a node with many CPUs. Crops are
    decoded `decode_batch_rows` at a time, each a record batch of the task's
    blocks: a multiple of the batch size keeps every training batch within one
    (`pipeline.batches.rebatch`)."""
    import ray.data

    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
    if rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1; got {rows_per_task}")
    shards = ShardStore(dataset_uri).shards("train")
    tasks = [
        task
        for each in range(epoch, epoch + 1 if stop_epoch is None else stop_epoch)
        for task in epoch_tasks(
            shards,
            seed=seed,
            epoch=each,
            rank=rank,
            world_size=world_size,
            rows=rows_per_epoch,
            rows_per_task=rows_per_task,
        )
    ]
    source = ShardRowsDatasource(
        dataset_uri,
        tasks,
        augmentation=augmentation,
        shuffle=True,
        decode=decode,
        decode_rows=decode_batch_rows,
    )
    dataset = ray.data.read_datasource(
        source,
        override_num_blocks=max(1, len(tasks)),
        num_cpus=cpus_per_task,
    )
    # The epochs' order is the plan above; Ray must not reorder finished blocks.
    # Set on this dataset's own copy of the DataContext (read_datasource took
    # one), not on the process-wide one other datasets share.
    dataset.context.execution_options.preserve_order = True
    return dataset


def batches_per_epoch(
    dataset_uri: str,
    *,
    world_size: int,
    batch_size: int,
    batches_per_step: int = 1,
    max_batches: int | None = None,
) -> int:
    """How many batches each worker gets per epoch: its share of the training
    rows (`epoch_assignment`: the same for every worker) in whole steps of
    `batches_per_step` batches, at most `max_batches`."""
    rows = sum(shard.rows for shard in ShardStore(dataset_uri).shards("train"))
    steps = rows // world_size // (batch_size * batches_per_step)
    if max_batches is not None:
        steps = min(steps, max_batches // batches_per_step)
    return steps * batches_per_step


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
    stop_epoch: int | None = None,
    batches_per_step: int = 1,
    max_batches: int | None = None,
    rows_per_task: int = TRAINING_ROWS_PER_TASK,
) -> Iterator[dict[str, object]]:
    """Epoch `epoch` of worker `rank`'s batches: {"image": uint8 NHWC on
    `device`, "label": int64, "key": list of str}, `batches_per_epoch` of them
    (whole steps of `batches_per_step`, at most `max_batches`): the rows of a
    partial last step are not read.

    decode_on="cpu" decodes in Ray Data tasks on the cluster's CPUs;
    decode_on="device" ships the JPEG bytes and decodes on `device` with
    torchvision's decoder (nvJPEG on a GPU), so the CPUs only read bytes.

    With `stop_epoch`, the call streams epochs up to it in one dataset
    (`training_dataset`) and keeps it: the next call, for epoch + 1 with the
    same arguments, takes its batches from the same stream, already under way.
    A call for any other epoch or arguments, or after this epoch's batches were
    not all taken, starts a new stream (and ends the old one: `end_training_batches`).
    `cpus_per_task` and `rows_per_task` shape the read tasks (`training_dataset`)."""
    if decode_on not in ("cpu", "device"):
        raise ValueError(f"decode_on must be 'cpu' or 'device'; got {decode_on!r}")
    count = batches_per_epoch(
        dataset_uri,
        world_size=world_size,
        batch_size=batch_size,
        batches_per_step=batches_per_step,
        max_batches=max_batches,
    )
    arguments = _StreamArguments(
        dataset_uri,
        rank,
        world_size,
        augmentation,
        batch_size,
        seed,
        decode_on,
        prefetch_batches,
        cpus_per_task,
        rows_per_task,
        count,
    )
    stream = _TrainingStream.take(arguments, epoch)
    if stream is None:
        stream = _TrainingStream.start(arguments, epoch, stop_epoch)
    for batch in stream.epoch():
        if decode_on == "cpu":
            yield on_device(crop_tensors(batch), device)
        else:
            yield {
                "image": augmentation.decode_on_device(
                    batch["image"], augmentation.decode_boxes(batch), device
                ),
                "label": torch.tensor(batch["label"], dtype=torch.int64, device=device),
                "key": batch["key"].tolist(),
            }


def end_training_batches() -> None:
    """End this process's training stream, if any: its Ray Data run stops and
    gives back its share of the CPUs (a stream otherwise lives until the epoch
    it was planned to), as a training loop that stops early should."""
    _TrainingStream.end()


class _StreamArguments(NamedTuple):
    """What a stream was started with: a later call with equal ones may take it."""

    dataset_uri: str
    rank: int
    world_size: int
    augmentation: TrainingAugmentation
    batch_size: int
    seed: int
    decode_on: str
    prefetch_batches: int
    cpus_per_task: float
    rows_per_task: int
    batches_per_epoch: int


class _TrainingStream:
    """One Ray Data stream of training batches over consecutive epochs, kept
    between `training_batches` calls in this process (a training worker). Each
    epoch is exactly `batches` batches long, so batches never straddle epochs."""

    _current: _TrainingStream | None = None

    def __init__(self, arguments: _StreamArguments, first_epoch: int, stop_epoch: int) -> None:
        self.arguments, self.next_epoch, self.stop_epoch = arguments, first_epoch, stop_epoch
        self.batches, self.taken = arguments.batches_per_epoch, 0
        dataset = training_dataset(
            arguments.dataset_uri,
            epoch=first_epoch,
            stop_epoch=stop_epoch,
            rank=arguments.rank,
            world_size=arguments.world_size,
            augmentation=arguments.augmentation,
            seed=arguments.seed,
            decode=arguments.decode_on == "cpu",
            rows_per_epoch=self.batches * arguments.batch_size,
            cpus_per_task=arguments.cpus_per_task,
            rows_per_task=arguments.rows_per_task,
            # Whole batches per block where the task's rows allow: no joins.
            decode_batch_rows=-(-64 // arguments.batch_size) * arguments.batch_size,
        )
        # Whole blocks as Arrow tables, cut into batches here (`rebatch`).
        blocks = dataset.iter_batches(
            batch_size=None, batch_format="pyarrow", prefetch_batches=arguments.prefetch_batches
        )
        self.iterator = rebatch(record_batches_as_numpy(iter(blocks)), arguments.batch_size)

    @classmethod
    def start(
        cls, arguments: _StreamArguments, epoch: int, stop_epoch: int | None
    ) -> _TrainingStream:
        cls.end()
        stream = cls(arguments, epoch, max(epoch + 1, stop_epoch or 0))
        cls._current = stream
        return stream

    @classmethod
    def take(cls, arguments: _StreamArguments, epoch: int) -> _TrainingStream | None:
        """The running stream if its next batch is `epoch`'s first, for the same arguments."""
        stream = cls._current
        if stream is None or (stream.arguments, stream.next_epoch, stream.taken) != (
            arguments,
            epoch,
            0,
        ):
            return None
        return stream

    @classmethod
    def end(cls) -> None:
        stream, cls._current = cls._current, None
        if stream is not None:
            stream.iterator.close()

    def epoch(self) -> Iterator[dict[str, object]]:
        """The next epoch's batches. The count is settled before the last one is
        handed over: a consumer that stops after it leaves the stream at the
        next epoch's start."""
        for _ in range(self.batches):
            batch = next(self.iterator)
            self.taken += 1
            if self.taken == self.batches:
                self.next_epoch, self.taken = self.next_epoch + 1, 0
                if self.next_epoch == self.stop_epoch and _TrainingStream._current is self:
                    _TrainingStream._current = None
            yield batch


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
    source = ShardRowsDatasource(dataset_uri, row_tasks(pieces, rows_per_task))
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
        yield on_device(batch, device)
