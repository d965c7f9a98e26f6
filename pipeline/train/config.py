"""The training stage's config: the paper's recipe (PAPER.md section 2) as
sections (model, augmentation, optimiser, hardware, tracking), each field
marked with whether it changes what the net learns (`pipeline.config.option`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config import ConfigError, Serialised, TrackingSection, option, require, require_name
from vgg.configs import CONFIGS, INIT_SCHEMES, resolve_config

DECODE_PLACES = ("cpu", "device")
# What a training run reports and logs, named once for the sweep and the workflow
# that read them: the metric the schedule, the best checkpoint and ASHA judge on,
# and the logged models.
VAL_METRIC = "val_top1_error"
BEST_MODEL = "best_model"
FINAL_MODEL = "final_model"
# A registered model name (no '/', '@', ':' or quotes: models:/ URIs and filters), then an
# optional MLflow alias (letters, digits, '_' and '-', not "latest" or "v<n>").
REGISTER_AS = re.compile(r"[^/@:'\"\s][^/@:'\"]*(@(?!(?i:latest)$|[vV]\d+$)[A-Za-z0-9_-]+)?")


@dataclass(frozen=True)
class ModelSection:
    """The network (`vgg.build_vgg`) and where its weights start."""

    config: str = option("A", fingerprint=True)  # Table 1 column: A, A-LRN, B, C, D, E
    width: float = option(1.0, fingerprint=True)  # channel multiplier; 1.0 is the paper's
    dropout: float = option(0.5, fingerprint=True)  # on FC1 and FC2
    # "gaussian" (N(0, init_std^2)), "xavier" or "kaiming" (torchvision's)
    init: str = option("gaussian", fingerprint=True)
    init_std: float = option(0.01, fingerprint=True)
    # Net A to copy from (MLflow run id or checkpoint path). A workflow leaves it
    # unset in its plan and keys its stages on the start net's fingerprint instead.
    init_from: str | None = option(None, fingerprint=True)
    resume_from: str | None = option(None, fingerprint=True)  # same-config net, smaller S

    def _check_model(self) -> None:
        try:
            object.__setattr__(self, "config", resolve_config(self.config))
        except ValueError:
            raise ConfigError(
                f"config must be one of {', '.join(CONFIGS)}; got {self.config!r}"
            ) from None
        require(self.width > 0, "width", "> 0", self.width)
        require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        require(self.init in INIT_SCHEMES, "init", f"one of {', '.join(INIT_SCHEMES)}", self.init)
        require(self.init_std > 0, "init_std", "> 0", self.init_std)
        if self.init_from is not None:
            require(
                self.config != "A",
                "init_from",
                "unset for config A (the deeper nets copy from net A)",
                self.init_from,
            )
        require(
            not (self.init_from and self.resume_from),
            "resume_from",
            "unset when init_from is set (one starting point)",
            self.resume_from,
        )


@dataclass(frozen=True)
class AugmentationSection:
    """The training transform (`vgg.transforms.TrainingAugmentation`) and the
    per-epoch check's test scale."""

    crop_size: int = option(224, fingerprint=True)  # training crop side, pixels; a multiple of 32
    # Training scale S: fixed when scale_min == scale_max, else jittered per image
    scale_min: int = option(256, fingerprint=True)  # pixels, shorter side
    scale_max: int = option(256, fingerprint=True)
    # AlexNet's PCA colour noise std; 0 turns it off
    colour_shift_std: float = option(0.1, fingerprint=True)
    # Q of the per-epoch check; None: S, or the middle of [Smin, Smax]
    test_scale: int | None = option(None, fingerprint=True)

    def _check_augmentation(self) -> None:
        require(
            self.crop_size >= 32 and self.crop_size % 32 == 0,
            "crop_size",
            "a positive multiple of 32",
            self.crop_size,
        )
        require(
            self.scale_min >= self.crop_size,
            "scale_min",
            f">= crop_size ({self.crop_size})",
            self.scale_min,
        )
        require(
            self.scale_max >= self.scale_min,
            "scale_max",
            f">= scale_min ({self.scale_min})",
            self.scale_max,
        )
        if self.test_scale is not None:
            require(
                self.test_scale >= self.crop_size,
                "test_scale",
                f">= crop_size ({self.crop_size})",
                self.test_scale,
            )
        require(self.colour_shift_std >= 0, "colour_shift_std", ">= 0", self.colour_shift_std)

    @property
    def train_scale(self) -> int | tuple[int, int]:
        """S for `vgg.transforms`: an int, or (Smin, Smax) when jittering."""
        if self.scale_min == self.scale_max:
            return self.scale_min
        return (self.scale_min, self.scale_max)

    @property
    def check_scale(self) -> int:
        """Q of the per-epoch validation: as given, else S, else the middle of [Smin, Smax]."""
        return self.test_scale or (self.scale_min + self.scale_max) // 2


@dataclass(frozen=True)
class OptimiserSection:
    """Mini-batch SGD with momentum and the paper's plateau schedule."""

    epochs: int = option(74, fingerprint=True)  # most epochs; the paper stopped after 74
    global_batch_size: int = option(256, fingerprint=True)  # images per SGD step, all workers
    lr: float = option(1e-2, fingerprint=True)
    momentum: float = option(0.9, fingerprint=True)
    weight_decay: float = option(5e-4, fingerprint=True)
    # lr multiplier when validation top-1 error stops improving
    lr_factor: float = option(0.1, fingerprint=True)
    lr_patience: int = option(2, fingerprint=True)  # epochs without improvement before a drop
    # The paper reduced three times; training stops after the next plateau
    max_lr_reductions: int = option(3, fingerprint=True)
    max_steps_per_epoch: int | None = option(None, fingerprint=True)  # cut epochs (smoke runs)
    seed: int = option(0, fingerprint=True)

    def _check_optimiser(self) -> None:
        require(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        require(self.lr > 0, "lr", "> 0", self.lr)
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(0 < self.lr_factor < 1, "lr_factor", "in (0, 1)", self.lr_factor)
        require(self.lr_patience >= 0, "lr_patience", ">= 0", self.lr_patience)
        require(self.max_lr_reductions >= 0, "max_lr_reductions", ">= 0", self.max_lr_reductions)
        if self.max_steps_per_epoch is not None:
            require(
                self.max_steps_per_epoch >= 1,
                "max_steps_per_epoch",
                ">= 1",
                self.max_steps_per_epoch,
            )


@dataclass(frozen=True)
class TrainHardwareSection:
    """Where and how fast the same learning runs. bf16 alone changes the numbers."""

    num_workers: int = option(1, fingerprint=False)  # data-parallel workers (one per GPU)
    use_gpu: bool = option(False, fingerprint=False)
    cpus_per_worker: float = option(1.0, fingerprint=False)
    data_cpus_per_task: float = option(1.0, fingerprint=False)  # CPUs of each Ray Data task
    # "cpu" (Ray Data tasks) or "device" (nvJPEG on the GPU)
    decode_on: str = option("cpu", fingerprint=False)
    # Images per forward pass; below the per-worker share it accumulates gradients,
    # the same SGD step in less memory
    micro_batch_size: int | None = option(None, fingerprint=False)
    bf16: bool = option(False, fingerprint=True)  # bf16 autocast: other rounding, other net
    channels_last: bool = option(False, fingerprint=False)
    compile: bool = option(False, fingerprint=False)  # torch.compile the model
    # On a cluster that adds nodes on demand: wait for them instead of refusing
    # a worker group that the nodes there now cannot hold
    wait_for_resources: bool = option(False, fingerprint=False)

    def _check_hardware(self) -> None:
        require(self.num_workers >= 1, "num_workers", ">= 1", self.num_workers)
        require(self.cpus_per_worker >= 0, "cpus_per_worker", ">= 0", self.cpus_per_worker)
        require(self.data_cpus_per_task > 0, "data_cpus_per_task", "> 0", self.data_cpus_per_task)
        require(
            self.decode_on in DECODE_PLACES,
            "decode_on",
            f"one of {', '.join(DECODE_PLACES)}",
            self.decode_on,
        )


@dataclass(frozen=True)
class TrainConfig(
    TrackingSection,
    TrainHardwareSection,
    OptimiserSection,
    AugmentationSection,
    ModelSection,
    Serialised,
):
    """One training run of the paper's recipe (PAPER.md section 2)."""

    recipe: str = option("custom", fingerprint=False)  # the named recipe it came from
    # Prepared dataset (preprocess output): local path or pyarrow.fs URI
    data: str = option("", fingerprint=True)
    storage_path: str = option("runs", fingerprint=False)  # checkpoints: folder or pyarrow.fs URI
    # The best this many by validation error, plus the latest
    keep_checkpoints: int = option(2, fingerprint=False)
    # Worker failures survived by restarting from the last checkpoint
    max_failures: int = option(2, fingerprint=False)
    # Training loss, lr, images/s and data wait go to MLflow every this many
    # optimiser steps (rank 0's window since the last point), on the global step
    log_every_steps: int = option(20, fingerprint=False)
    # Register the best model in the MLflow model registry when training ends:
    # "name" or "name@alias" (the alias moved to it), e.g. "vgg-D@mine"
    register_as: str | None = option(None, fingerprint=False)

    def __post_init__(self) -> None:
        require_name("run_name", self.run_name)
        self._check_model()
        self._check_augmentation()
        self._check_optimiser()
        self._check_hardware()
        require(
            self.global_batch_size >= self.num_workers
            and self.global_batch_size % self.num_workers == 0,
            "global_batch_size",
            f"a multiple of num_workers ({self.num_workers}) so that it splits evenly",
            self.global_batch_size,
        )
        if self.micro_batch_size is not None:
            require(
                self.micro_batch_size >= 1
                and self.batch_size_per_worker % self.micro_batch_size == 0,
                "micro_batch_size",
                f"a divisor of the per-worker batch ({self.batch_size_per_worker})",
                self.micro_batch_size,
            )
        require(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1", self.keep_checkpoints)
        require(self.log_every_steps >= 1, "log_every_steps", ">= 1", self.log_every_steps)
        require(self.max_failures >= -1, "max_failures", ">= -1 (-1: unlimited)", self.max_failures)
        require(
            self.register_as is None or REGISTER_AS.fullmatch(self.register_as) is not None,
            "register_as",
            "a model name, or name@alias with an alias of letters, digits, _ and -",
            self.register_as,
        )

    @property
    def batch_size_per_worker(self) -> int:
        return self.global_batch_size // self.num_workers

    @property
    def name(self) -> str:
        return self.run_name or self.recipe

    @property
    def registered_model(self) -> tuple[str, str | None] | None:
        """`register_as` as (model name, alias or None); None when unset."""
        if not self.register_as:
            return None
        name, _, alias = self.register_as.partition("@")
        return name, alias or None


__all__ = [
    "BEST_MODEL",
    "DECODE_PLACES",
    "FINAL_MODEL",
    "VAL_METRIC",
    "AugmentationSection",
    "ModelSection",
    "OptimiserSection",
    "TrainConfig",
    "TrainHardwareSection",
]
