"""The training recipes: one per paper run (config x stage, on GPUs) and the
`demo` and `smoke` nets small enough for a laptop CPU."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.train.config import TrainConfig

PAPER_CONFIGS = ("a", "a-lrn", "b", "c", "d", "e")


def paper(config: str, stage: str, **overrides: Any) -> TrainConfig:
    """The paper's recipe on GPUs: 224 crops, batch 256, bf16 and channels_last."""
    recipe = f"paper-{config}-{stage}"
    base = TrainConfig(
        recipe=recipe,
        config=config.upper(),
        use_gpu=True,
        num_workers=4,  # the paper's 4 GPUs; set num_workers for your cluster
        cpus_per_worker=4,
        bf16=True,
        channels_last=True,
        compile=True,
    )
    if stage == "384":
        # Initialised from the S = 256 net with a smaller lr (section 3.1).
        base = dataclasses.replace(base, scale_min=384, scale_max=384, lr=1e-3)
    elif stage == "jitter":
        # Fine-tuned, all layers, from the S = 384 net of the same config.
        base = dataclasses.replace(base, scale_min=256, scale_max=512, lr=1e-3, test_scale=384)
    return dataclasses.replace(base, **overrides)


def demo(**overrides: Any) -> TrainConfig:
    """Narrow nets on the demo digits, on a laptop CPU: width 1/8 on 64-pixel
    crops at S = 72 (the paper's 224 to 256 ratio, near enough). 64 pixels, not
    32: dense evaluation needs a score map of several windows, and a 32-pixel
    crop gives FC1 a 1x1 kernel whose one window sits at the image's top left;
    at width 1/8 it costs what width 1/4 on 32-pixel crops did. torchvision's
    (He) init: the paper's gaussian init needs its long schedule, and net A,
    to get going."""
    return TrainConfig(
        recipe="demo",
        config="A",
        width=0.125,
        crop_size=64,
        scale_min=72,
        scale_max=72,
        init="kaiming",
        epochs=20,
        global_batch_size=32,
        lr=0.01,
        lr_patience=1,
        max_lr_reductions=2,
        num_workers=2,
        cpus_per_worker=0.5,
        data_cpus_per_task=0.5,
        keep_checkpoints=1,
        log_every_steps=5,
        **overrides,
    )


def smoke(**overrides: Any) -> TrainConfig:
    """The smallest run that exercises every part: seconds of training, on
    32-pixel crops at S = 36."""
    return dataclasses.replace(
        demo(),
        recipe="smoke",
        width=0.0625,
        crop_size=32,
        scale_min=36,
        scale_max=36,
        epochs=2,
        max_steps_per_epoch=4,
        log_every_steps=1,
        num_workers=1,
        **overrides,
    )


def _recipes() -> dict[str, Callable[..., TrainConfig]]:
    recipes: dict[str, Callable[..., TrainConfig]] = {"demo": demo, "smoke": smoke}
    for config in PAPER_CONFIGS:
        for stage in ("256", "384", "jitter"):
            recipes[f"paper-{config}-{stage}"] = lambda c=config, s=stage, **kw: paper(c, s, **kw)
    return recipes


RECIPES = _recipes()
