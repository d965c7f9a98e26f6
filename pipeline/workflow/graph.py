"""The workflow's nets: which are trained, each from which, at which training
scale S, with which recipe (PAPER.md section 2, Table 3), and the evaluation
settings every net gets. The stages (`pipeline.workflow.stages`) train and
evaluate what this module plans."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.config import apply_overrides, train_scale_label
from pipeline.evaluation.config import EvaluateConfig
from pipeline.recipes import recipe
from pipeline.train.config import TrainConfig
from pipeline.workflow.config import WorkflowConfig

# The paper's recipe stage of each phase: paper-<config>-<stage>
PAPER_RECIPE_STAGES = {"base": "256", "large": "384", "jitter": "jitter"}


@dataclass(frozen=True)
class Net:
    """One trained net of the graph."""

    key: str  # "D-256", "D-384", "D-256-512", "D-256-random"
    config: str  # Table 1 column
    scale: tuple[int, int]  # (Smin, Smax)
    start: str | None  # the net it starts from; None: random weights
    start_mode: str | None  # "init_from" (net A's layers) or "resume_from" (all layers)
    phase: str  # "base", "large" or "jitter": which epochs and recipe stage apply

    @property
    def initialised_from(self) -> str:
        return self.start or "random"

    @property
    def train_scale(self) -> str:
        """S as the paper's tables print it: 256, or [256;512] when jittered."""
        return train_scale_label(self.scale)


def _net_key(config: str, scale: tuple[int, int], suffix: str = "") -> str:
    return f"{config}-{train_scale_label(scale, sep='-')}{suffix}"


def nets(config: WorkflowConfig) -> list[Net]:
    """The nets of the graph, each after the one it starts from."""
    base = (config.base_scale, config.base_scale)
    a_key = _net_key("A", base)
    graph = [Net(a_key, "A", base, None, None, "base")]
    for name in config.random_init:
        if name == "A":
            continue  # net A is always trained from random weights
        # Beside the same config trained from A, the random one needs another name.
        suffix = "-random" if name in config.from_a else ""
        graph.append(Net(_net_key(name, base, suffix), name, base, None, None, "base"))
    for name in config.from_a:
        graph.append(Net(_net_key(name, base), name, base, a_key, "init_from", "base"))
    if config.large_scale is not None:
        large = (config.large_scale, config.large_scale)
        for name in config.scale_configs:
            large_key = _net_key(name, large)
            graph.append(Net(large_key, name, large, _net_key(name, base), "resume_from", "large"))
            if config.jitter is not None:
                jitter_key = _net_key(name, config.jitter)
                graph.append(
                    Net(jitter_key, name, config.jitter, large_key, "resume_from", "jitter")
                )
    return graph


def train_config(config: WorkflowConfig, net: Net) -> TrainConfig:
    """The training config of `net`, before the workflow wires in data, start
    point, run name and storage."""
    if config.train_recipe == "paper":
        base = recipe(f"paper-{net.config.lower()}-{PAPER_RECIPE_STAGES[net.phase]}")
    else:
        base = recipe(config.train_recipe)
        if net.phase != "base":
            # Fine-tuning from a trained net: a tenth of the lr (section 3.1).
            base = dataclasses.replace(base, lr=base.lr / 10)
    low, high = net.scale
    epochs = config.base_epochs if net.phase == "base" else config.finetune_epochs
    base = dataclasses.replace(
        base,
        config=net.config,
        scale_min=low,
        scale_max=high,
        test_scale=None,
        epochs=epochs or base.epochs,
    )
    return apply_overrides(base, list(config.train_overrides))


def evaluate_settings(config: WorkflowConfig, **fields: Any) -> EvaluateConfig:
    """The evaluation config of every net (or, with ensemble=True, of the
    ensemble), validated here so that a bad override fails before any stage
    runs. Its models and data are stand-ins until the nets are trained."""
    settings = EvaluateConfig(
        models=("planned",) * 2,
        protocols=config.protocols,
        scales=config.scales,
        scale_step=config.scale_step,
        **fields,
    )
    return apply_overrides(settings, list(config.eval_overrides))


__all__ = ["Net", "evaluate_settings", "nets", "train_config"]
