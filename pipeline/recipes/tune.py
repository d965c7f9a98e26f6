"""The sweep recipes: the smallest sweep that exercises every part, the demo
net's, and the paper's net A on GPUs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.recipes.train import demo, paper
from pipeline.train.config import TrainConfig
from pipeline.tune.config import TuneConfig


def _tune_smoke(**overrides: Any) -> TuneConfig:
    """Four short trials (lr 2e-3 and 1e-5, each at S = 36 and S in [36; 44]) of
    three epochs, ASHA rungs after epochs 1 and 2: the smallest sweep that
    exercises every part, in a few minutes on two CPUs. Measured on the demo
    digits: lr 2e-3 reaches 0.36 top-1 error at S = 36 in three epochs while
    1e-5 stays above 0.9, so ASHA has real losers to stop. The base config is
    spelt out rather than taken from the smoke recipe, so that retuning that
    recipe leaves this sweep as it is."""
    train = TrainConfig(
        recipe="tune-smoke",
        config="A",
        width=0.125,
        crop_size=32,
        scale_min=36,
        scale_max=36,
        init="xavier",  # what the figures above were measured with
        dropout=0.0,
        epochs=3,
        global_batch_size=32,
        lr_patience=3,  # no lr drops inside three epochs
        num_workers=1,
        cpus_per_worker=0.5,
        data_cpus_per_task=0.25,
        keep_checkpoints=1,
    )
    return TuneConfig(
        recipe="tune-smoke",
        name="tune-smoke",
        train=train,
        lrs=(2e-3, 1e-5),
        scales=((36, 36), (36, 44)),
        grace_period=1,
        reduction_factor=2,
        **overrides,
    )


def _tune_demo(**overrides: Any) -> TuneConfig:
    """The demo recipe's net: four learning rates drawn log-uniformly per scale
    (fixed S = 72 and S jittered in [72; 96]), ASHA from epoch 2 with rungs at
    epochs 2, 6 and 18."""
    return TuneConfig(
        recipe="tune-demo",
        name="tune-demo",
        train=demo(),
        lr_range=(1e-4, 3e-2),
        num_samples=4,
        scales=((72, 72), (72, 96)),
        grace_period=2,
        reduction_factor=3,
        **overrides,
    )


def _tune_paper(**overrides: Any) -> TuneConfig:
    """The paper's net A (section 3.1): lr around its 1e-2 at S = 256, 384 and
    [256; 512], ASHA from epoch 4; on GPUs (set train.num_workers for the cluster)."""
    return TuneConfig(
        recipe="tune-paper-a",
        name="tune-paper-a",
        train=paper("a", "256"),
        lrs=(3e-2, 1e-2, 3e-3),
        scales=((256, 256), (384, 384), (256, 512)),
        grace_period=4,
        reduction_factor=3,
        **overrides,
    )


TUNE_RECIPES: dict[str, Callable[..., TuneConfig]] = {
    "tune-smoke": _tune_smoke,
    "tune-demo": _tune_demo,
    "tune-paper-a": _tune_paper,
}
