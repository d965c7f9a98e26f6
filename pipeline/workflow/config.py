"""The whole recipe's config (`pipeline.workflow`): the data, which nets are
trained from which, how each is evaluated, where it all goes. Each field says
whether it changes the workflow's results (`pipeline.config.option`); a stage's
own fingerprint comes from the stage configs it builds, not from these marks."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import (
    ConfigError,
    Serialised,
    apply_overrides,
    as_tuple,
    option,
    parse_train_scale,
    require,
    require_name,
)
from pipeline.evaluation.config import SCALE_SETS, EvaluateConfig, check_protocols, parse_scale_set
from pipeline.train.config import TrainConfig
from vgg.configs import CONFIGS, resolve_config

WORKFLOW_TRAIN_RECIPES = ("paper", "demo", "smoke")


@dataclass(frozen=True)
class WorkflowConfig(Serialised):
    """The paper's whole recipe as one run of stages (`pipeline.run`): the data,
    which nets are trained from which, how each is evaluated, where it all goes.
    Net names in the graph are CONFIG-S ("D-256", "D-384", "D-256-512"), with
    "-random" for a net trained from random weights beside the same net from A."""

    # The named workflow recipe it came from
    recipe: str = option("custom", fingerprint=False)
    # ILSVRC-2012 as users have it (folders or the official tars), or a prepared
    # dataset (a preprocess output, with manifest.json): local path or pyarrow.fs URI
    data: str = option("", fingerprint=True)
    # Shards, checkpoints and tables: a local folder, or shared storage (NFS path,
    # s3://...) that every node of a cluster reaches at the same name
    work_dir: str = option("vggpipe-work", fingerprint=False)
    # The MLflow parent run; None: "<recipe>-<digest of the fingerprinted settings>"
    run_name: str | None = option(None, fingerprint=False)
    experiment: str = option("vggpipe", fingerprint=False)
    tracking_uri: str | None = option(None, fingerprint=False)  # None: MLFLOW_TRACKING_URI

    # Preprocessing (pipeline.preprocess); ignored when `data` is already prepared
    # Pixels: must cover the largest training and test scale
    max_short_side: int = option(512, fingerprint=True)
    shard_rows: int = option(1000, fingerprint=True)
    stats_images: int = option(10_000, fingerprint=True)

    # The nets (PAPER.md section 2, Table 3). Net A is trained from random weights
    # at base_scale; `from_a` nets start from it, `random_init` ones from random.
    # "paper": each net's paper-<config>-<S> recipe; else one base recipe for all
    train_recipe: str = option("paper", fingerprint=True)
    base_scale: int = option(256, fingerprint=True)  # S of net A and the nets started from it
    from_a: tuple[str, ...] = option(("B", "C", "D", "E"), fingerprint=True)
    random_init: tuple[str, ...] = option(("A-LRN",), fingerprint=True)
    # Each of these is fine-tuned at large_scale from its base-scale net, then
    # jittered in jitter_scale from the large-scale one (section 3.1)
    scale_configs: tuple[str, ...] = option(("C", "D", "E"), fingerprint=True)
    large_scale: int | None = option(384, fingerprint=True)  # None: no large-scale nets
    jitter_scale: str | None = option("256:512", fingerprint=True)  # Smin:Smax; None: none
    base_epochs: int | None = option(None, fingerprint=True)  # None: the training recipe's
    # Of the large-scale and jittered nets; None: the recipe's
    finetune_epochs: int | None = option(None, fingerprint=True)
    # TrainConfig fields for every net: hardware (num_workers=16, use_gpu=true) or
    # recipe; each stage's fingerprint keeps only those that change its net
    train_overrides: tuple[str, ...] = option((), fingerprint=True)

    # Evaluation (pipeline.evaluation) of every net, then of the ensemble
    protocols: tuple[str, ...] = option(
        ("dense", "multi-crop", "dense+multi-crop"), fingerprint=True
    )
    scales: tuple[str, ...] = option(SCALE_SETS, fingerprint=True)
    scale_step: int = option(32, fingerprint=True)  # fixed S: multi-scale Q = S - step, S, S + step
    # Net names; () for none
    ensemble: tuple[str, ...] = option(("D-256-512", "E-256-512"), fingerprint=True)
    # EvaluateConfig fields for every evaluation: grid=5, limit=1000, workers=8, batch_size
    eval_overrides: tuple[str, ...] = option((), fingerprint=True)

    def __post_init__(self) -> None:
        require_name("run_name", self.run_name)
        as_tuple(
            self,
            "from_a",
            "random_init",
            "scale_configs",
            "train_overrides",
            "protocols",
            "scales",
            "ensemble",
            "eval_overrides",
        )
        for name in ("from_a", "random_init", "scale_configs"):
            canonical = []
            for config in getattr(self, name):
                try:
                    canonical.append(resolve_config(config))
                except ValueError:
                    raise ConfigError(
                        f"{name} takes configs from {', '.join(CONFIGS)}; got {config!r}"
                    ) from None
            object.__setattr__(self, name, tuple(canonical))
        require(
            self.train_recipe in WORKFLOW_TRAIN_RECIPES,
            "train_recipe",
            f"one of {', '.join(WORKFLOW_TRAIN_RECIPES)}",
            self.train_recipe,
        )
        require(
            "A" not in self.from_a,
            "from_a",
            "deeper configs than A (A is their start)",
            self.from_a,
        )
        trained = {"A", *self.from_a, *self.random_init}
        require(
            all(c in trained for c in self.scale_configs),
            "scale_configs",
            "configs trained at base_scale (A, from_a, random_init): their base-scale net "
            "is the start",
            self.scale_configs,
        )
        require(self.base_scale >= 32, "base_scale", ">= 32 pixels", self.base_scale)
        if self.large_scale is not None:
            require(
                self.large_scale > self.base_scale,
                "large_scale",
                f"> base_scale ({self.base_scale}) or None",
                self.large_scale,
            )
        if self.jitter_scale is not None:
            low, high = parse_train_scale(self.jitter_scale)
            require(
                low < high and self.large_scale is not None,
                "jitter_scale",
                "Smin:Smax with Smin < Smax, with large_scale set (the jittered nets start "
                "from the large-scale ones)",
                self.jitter_scale,
            )
        require(self.max_short_side >= 16, "max_short_side", ">= 16", self.max_short_side)
        require(self.shard_rows >= 1, "shard_rows", ">= 1", self.shard_rows)
        require(self.stats_images >= 1, "stats_images", ">= 1", self.stats_images)
        for name in ("base_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if value is not None:
                require(value >= 1, name, ">= 1 or None", value)
        check_protocols(self.protocols)
        for entry in self.scales:
            parse_scale_set(entry)
        require(self.scale_step >= 1, "scale_step", ">= 1", self.scale_step)
        require(
            len(self.ensemble) != 1, "ensemble", "two or more net names, or none", self.ensemble
        )
        # Overrides fail here, not hours later at the stage that uses them.
        apply_overrides(TrainConfig(), list(self.train_overrides))
        apply_overrides(EvaluateConfig(models=("x",)), list(self.eval_overrides))

    @property
    def jitter(self) -> tuple[int, int] | None:
        return parse_train_scale(self.jitter_scale) if self.jitter_scale else None
