"""The workflow recipes: the paper's whole graph, its demo on the digits, and
the smoke graph every kind of stage runs in for tests and CI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.workflow.config import WorkflowConfig


def _workflow_paper(**overrides: Any) -> WorkflowConfig:
    """The paper: A and A-LRN from random, B-E from A at S = 256; C, D, E at 384
    from 256 and jittered in [256; 512] from 384; the D + E ensemble."""
    return WorkflowConfig(recipe="paper", **overrides)


def _workflow_demo(**overrides: Any) -> WorkflowConfig:
    """The paper's graph scaled to the demo digits and two CPU cores: the demo
    recipe's narrow nets on 64-pixel crops, S = 72 for 256, 108 for 384 and
    [72; 144] for [256; 512] (the paper's ratios to the crop), and a multi-scale
    step of 8 for its 32. Net D is trained from A and also from random weights,
    then at S = 108 and jittered (see README for how long it takes)."""
    return WorkflowConfig(
        recipe="demo",
        train_recipe="demo",
        max_short_side=160,  # the largest Q: 144 for the jittered net
        shard_rows=500,
        base_scale=72,
        from_a=("D",),
        random_init=("D",),
        scale_configs=("D",),
        large_scale=108,
        jitter_scale="72:144",
        base_epochs=10,
        finetune_epochs=4,
        # The digits' 359 validation images make the per-epoch error noisy (a few
        # points up and down): with the demo recipe's patience of one epoch, one
        # noisy epoch cut D-from-A's lr twice by epoch 5 and stalled it.
        # One worker with the whole CPU: two DDP workers on two cores run at 0.43x
        # the images/s of one (benchmarks/scaling.py); data-parallel training is
        # what the tests' multi-node runs and `vggpipe train --recipe demo` show.
        train_overrides=("lr_patience=3", "num_workers=1", "cpus_per_worker=1"),
        scale_step=8,
        ensemble=("D-72", "D-72-144"),
        eval_overrides=("grid=3",),
        **overrides,
    )


def _workflow_smoke(**overrides: Any) -> WorkflowConfig:
    """Every kind of stage on the smoke recipe's tiny nets (seconds of training
    each): A, B from A, A at a larger S and jittered, their evaluation, an
    ensemble and the tables. For tests and CI."""
    return WorkflowConfig(
        recipe="smoke",
        train_recipe="smoke",
        max_short_side=64,
        shard_rows=500,
        base_scale=36,
        from_a=("B",),
        random_init=(),
        scale_configs=("A",),
        large_scale=44,
        jitter_scale="36:52",
        base_epochs=1,
        finetune_epochs=1,
        protocols=("dense", "multi-crop"),
        scales=("single",),
        scale_step=4,
        ensemble=("A-36", "B-36"),
        eval_overrides=("grid=2", "limit=64"),
        **overrides,
    )


WORKFLOW_RECIPES: dict[str, Callable[..., WorkflowConfig]] = {
    "paper": _workflow_paper,
    "demo": _workflow_demo,
    "smoke": _workflow_smoke,
}
