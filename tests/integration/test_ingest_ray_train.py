"""Training ingest on real Ray Train workers, and evaluation views, on demo data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import ingest
from pipeline.shards import ShardStore
from vgg.transforms import TrainingAugmentation


def _keys_per_worker(demo_shards: str, tmp_path, seed: int, epochs: int) -> dict:
    """Run two Ray Train workers over `epochs` epochs; return {(epoch, rank): keys}."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    out = tmp_path / f"seed{seed}-epochs{epochs}"
    out.mkdir()

    def loop(config):
        import ray.train

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        for epoch in range(config["epochs"]):
            keys, shapes = [], set()
            for batch in ingest.training_batches(
                config["data"],
                epoch=epoch,
                rank=rank,
                world_size=world,
                augmentation=TrainingAugmentation((64, 96), 64),
                batch_size=32,
                seed=config["seed"],
                cpus_per_task=0.25,
                stop_epoch=config["epochs"],  # one stream for both epochs, as training does
            ):
                keys += batch["key"]
                shapes.add((tuple(batch["image"].shape), str(batch["image"].dtype)))
            path = f"{config['out']}/{epoch}-{rank}.json"
            with open(path, "w") as f:
                json.dump({"keys": keys, "shapes": sorted(shapes)}, f)

    TorchTrainer(
        loop,
        train_loop_config={"data": demo_shards, "seed": seed, "epochs": epochs, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.25}),
    ).fit()
    return {
        (epoch, rank): json.loads((out / f"{epoch}-{rank}.json").read_text())
        for epoch in range(epochs)
        for rank in range(2)
    }


@pytest.mark.slow
def test_two_train_workers_see_each_key_once_per_epoch_in_a_seeded_order(
    demo_shards, tmp_path, ray_local
):
    all_keys = [row["key"] for row in ShardStore(demo_shards).iter_rows("train", ["key"])]
    first = _keys_per_worker(demo_shards, tmp_path, seed=0, epochs=2)
    for epoch in range(2):
        seen = first[(epoch, 0)]["keys"] + first[(epoch, 1)]["keys"]
        assert len(seen) == len(set(seen)), "a key reached two workers or came twice"
        assert set(seen) <= set(all_keys)
        # What is missing is at most the world-size remainder plus each worker's
        # last partial batch of 32.
        assert len(all_keys) - len(seen) < 2 + 2 * 32
        assert len(first[(epoch, 0)]["keys"]) == len(first[(epoch, 1)]["keys"])
        assert first[(epoch, 0)]["shapes"] == [[[32, 64, 64, 3], "torch.uint8"]]
    assert first[(0, 0)]["keys"] != first[(1, 0)]["keys"], "the order must change per epoch"
    # The order is a function of (seed, epoch, rank) alone: read again outside
    # Ray Train, each rank's epoch 0 comes in the same order.
    for rank in range(2):
        again = [
            key
            for batch in ingest.training_batches(
                demo_shards,
                epoch=0,
                rank=rank,
                world_size=2,
                augmentation=TrainingAugmentation((64, 96), 64),
                batch_size=32,
                seed=0,
                cpus_per_task=0.5,
            )
            for key in batch["key"]
        ]
        assert again == first[(0, rank)]["keys"]


def test_augmentation_repeats_for_a_seed_and_changes_per_epoch(demo_shards, ray_local):
    def first_batch(epoch):
        batches = ingest.training_batches(
            demo_shards,
            epoch=epoch,
            rank=0,
            world_size=1,
            augmentation=TrainingAugmentation((64, 96), 64),
            batch_size=16,
            cpus_per_task=0.5,
        )
        return next(iter(batches))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    assert a["key"] != c["key"]
    assert a["label"].dtype == torch.int64


def test_device_decode_gives_the_cpu_crops(demo_shards, ray_local):
    augmentation = TrainingAugmentation(80, 64)
    common = dict(epoch=0, rank=0, world_size=1, augmentation=augmentation, batch_size=8)
    on_cpu = next(iter(ingest.training_batches(demo_shards, **common, cpus_per_task=0.5)))
    on_device = next(
        iter(ingest.training_batches(demo_shards, **common, decode_on="device", cpus_per_task=0.5))
    )
    assert on_cpu["key"] == on_device["key"]
    difference = (on_cpu["image"].float() - on_device["image"].float()).abs().mean()
    assert difference < 3.0


def test_evaluation_views(demo_shards, ray_local):
    val_rows = ShardStore(demo_shards).manifest().splits["val"].rows
    dense = ingest.evaluation_dataset(demo_shards, scale=72, view="dense", cpus_per_task=0.5)
    count = 0
    for batch in dense.iter_batches(batch_size=64, batch_format="numpy"):
        for image, height, width in zip(
            batch["image"], batch["height"], batch["width"], strict=True
        ):
            assert image.dtype == np.uint8 and image.shape == (height, width, 3)
            assert min(height, width) == 72
        count += len(batch["label"])
    assert count == val_rows
    with pytest.raises(ValueError, match="view must be one of"):
        ingest.evaluation_dataset(demo_shards, scale=72, view="tencrop")


def test_pixel_statistics_come_from_the_manifest(demo_shards):
    stats = ingest.pixel_statistics(demo_shards)
    manifest = ShardStore(demo_shards).manifest().statistics
    assert stats.mean_rgb == tuple(manifest.mean_rgb)
    assert stats.eigenvalues[0] == pytest.approx(manifest.eigenvalues[0] / 255**2)


def test_a_stream_of_epochs_gives_each_epochs_own_batches(demo_shards, ray_local):
    common = dict(
        rank=0,
        world_size=1,
        augmentation=TrainingAugmentation(80, 64),
        batch_size=16,
        cpus_per_task=0.5,
        batches_per_step=2,
    )
    expected = ingest.batches_per_epoch(
        demo_shards, world_size=1, batch_size=16, batches_per_step=2
    )
    assert expected % 2 == 0 and expected > 2

    def batches(epoch, **extra):
        return list(ingest.training_batches(demo_shards, epoch=epoch, **common, **extra))

    def keys(batches):
        return [key for batch in batches for key in batch["key"]]

    streamed = batches(0, stop_epoch=3)
    stream = ingest._TrainingStream._current
    assert stream is not None and stream.next_epoch == 1, "the stream ended after one epoch"
    second = batches(1, stop_epoch=3)
    assert ingest._TrainingStream._current is stream, "epoch 1 did not come from the stream"
    # Each epoch exactly as read alone: same rows, order and crops.
    alone = batches(0)
    assert len(streamed) == len(alone) == expected
    assert keys(streamed) == keys(alone)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(streamed, alone, strict=True))
    assert keys(second) == keys(batches(1)) != keys(alone)

    # A consumer that stops mid-epoch (after one batch) leaves no half-read
    # stream behind: the next call starts afresh, with the same batches.
    first = next(iter(ingest.training_batches(demo_shards, epoch=0, stop_epoch=3, **common)))
    assert first["key"] == alone[0]["key"]
    assert keys(batches(0, stop_epoch=3)) == keys(alone)
    # max_batches cuts each epoch to whole steps (3 batches: one step of 2),
    # in a seeded order of its own.
    capped = keys(batches(1, max_batches=3))
    assert len(capped) == 2 * 16 and set(capped) < set(keys(second))
    assert capped == keys(batches(1, max_batches=3))
    ingest.end_training_batches()
    assert ingest._TrainingStream._current is None


def test_the_epoch_order_is_kept_on_the_datasets_own_context(demo_shards, ray_local):
    import ray.data

    process_wide = ray.data.DataContext.get_current().execution_options.preserve_order
    dataset = ingest.training_dataset(
        demo_shards, epoch=0, rank=0, world_size=1, augmentation=TrainingAugmentation(80, 64)
    )
    assert dataset.context.execution_options.preserve_order
    assert ray.data.DataContext.get_current().execution_options.preserve_order == process_wide
