"""The evaluation stage's config (PAPER.md section 3): which nets, which
protocols at which test scales, on which hardware. Each field says whether it
changes the figures (`pipeline.config.option`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import (
    ConfigError,
    Serialised,
    TrackingSection,
    as_tuple,
    option,
    require,
    require_name,
)
from vgg.configs import DENSE_REGIONS, SCORE_POOLING

EVALUATION_PROTOCOLS = ("centre", "dense", "multi-crop", "dense+multi-crop")
SCALE_SETS = ("single", "multi")


def parse_scale_set(text: str) -> str | tuple[int, ...]:
    """ "single", "multi", or explicit test scales Q as "256,384,512"."""
    text = str(text).strip().lower()
    if text in SCALE_SETS:
        return text
    try:
        scales = tuple(int(q) for q in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(
            f"scales must be 'single', 'multi' or comma-separated Q like '256,384,512'; got {text!r}"
        ) from None
    require(all(q > 0 for q in scales), "scales", "positive test scales Q", text)
    return tuple(sorted(set(scales)))


def check_protocols(protocols: tuple[str, ...]) -> None:
    unknown = [p for p in protocols if p not in EVALUATION_PROTOCOLS]
    require(
        bool(protocols) and not unknown,
        "protocols",
        f"one or more of {', '.join(EVALUATION_PROTOCOLS)}",
        protocols,
    )


@dataclass(frozen=True)
class ProtocolSection:
    """What is measured: the paper's protocols, test scales and views."""

    protocols: tuple[str, ...] = option(EVALUATION_PROTOCOLS, fingerprint=True)
    # Each entry is one table block: "single" (Q = S, or the middle of [Smin, Smax]),
    # "multi" (the paper's three Q from S), or explicit Q as "256,384,512".
    scales: tuple[str, ...] = option(SCALE_SETS, fingerprint=True)
    # Fixed S: multi-scale Q = S - step, S, S + step (pixels)
    scale_step: int = option(32, fingerprint=True)
    # Also the nets' averaged posteriors (needs two or more)
    ensemble: bool = option(False, fingerprint=True)
    grid: int = option(5, fingerprint=True)  # multi-crop: grid x grid crops, each also flipped
    # Evaluate only the split's first `limit` images (quick checks)
    limit: int | None = option(None, fingerprint=True)
    # Also write each image's top-5 classes (predictions.parquet): another output
    predictions: bool = option(False, fingerprint=True)
    # Dense evaluation's max-pools round odd sizes up, as the paper's Caffe nets
    # did (False: PyTorch's floor, which drops the border at Q not a multiple of 32)
    dense_ceil_mode: bool = option(True, fingerprint=True)
    # The score map to one vector: "mean" (default) or "sum" (the paper's
    # "sum-pooled" read literally; it sharpens the softmax on larger images)
    dense_pooling: str = option("mean", fingerprint=True)
    # What of the rescaled image dense evaluation sees: "centred", the part its
    # score windows tile exactly, centred (`vgg.dense.whole_window_region`; the
    # whole image at Q = crop + whole strides, as all the paper's Q are), or
    # "whole", the image as it is, the pools' rounding deciding its border
    dense_region: str = option("centred", fingerprint=True)

    def _check_protocols(self) -> None:
        as_tuple(self, "protocols", "scales")
        check_protocols(self.protocols)
        require(bool(self.scales), "scales", "one or more scale sets", self.scales)
        canonical = []
        for entry in self.scales:
            parsed = parse_scale_set(entry)
            canonical.append(parsed if isinstance(parsed, str) else ",".join(map(str, parsed)))
        object.__setattr__(self, "scales", tuple(canonical))
        require(self.scale_step >= 1, "scale_step", ">= 1", self.scale_step)
        require(self.grid >= 2, "grid", ">= 2 (corners and centre need a grid)", self.grid)
        if self.limit is not None:
            require(self.limit >= 1, "limit", ">= 1 or None", self.limit)
        require(
            self.dense_pooling in SCORE_POOLING,
            "dense_pooling",
            f"one of {', '.join(SCORE_POOLING)}",
            self.dense_pooling,
        )
        require(
            self.dense_region in DENSE_REGIONS,
            "dense_region",
            f"one of {', '.join(DENSE_REGIONS)}",
            self.dense_region,
        )

    @property
    def scale_sets(self) -> tuple[str | tuple[int, ...], ...]:
        """`scales` parsed: "single", "multi" or a tuple of Q."""
        return tuple(parse_scale_set(entry) for entry in self.scales)


@dataclass(frozen=True)
class EvaluationHardwareSection:
    """How fast the same figures come. bf16 alone changes the numbers."""

    # Most network inputs (crops or whole images) per forward pass
    batch_size: int = option(64, fingerprint=False)
    # Dense evaluation: most equal-size whole images per forward pass (each with its
    # flip). None: batch_size // 2 on a GPU, 1 on a CPU, where batching whole images
    # measured no faster than one at a time (benchmarks/evaluate.py).
    dense_batch_size: int | None = option(None, fingerprint=False)
    # Ray tasks sharing the images; None: one per GPU, else 1
    workers: int | None = option(None, fingerprint=False)
    use_gpu: bool | None = option(None, fingerprint=False)  # None: when the cluster has GPUs
    cpus_per_worker: float = option(1.0, fingerprint=False)
    data_cpus_per_task: float = option(1.0, fingerprint=False)  # CPUs of each Ray Data task
    bf16: bool = option(False, fingerprint=True)  # bf16 autocast: other rounding, other figures

    def _check_hardware(self) -> None:
        require(self.batch_size >= 2, "batch_size", ">= 2", self.batch_size)
        if self.dense_batch_size is not None:
            require(
                self.dense_batch_size >= 1,
                "dense_batch_size",
                ">= 1 or None",
                self.dense_batch_size,
            )
        if self.workers is not None:
            require(self.workers >= 1, "workers", ">= 1 or None", self.workers)
        require(self.cpus_per_worker >= 0, "cpus_per_worker", ">= 0", self.cpus_per_worker)
        require(self.data_cpus_per_task > 0, "data_cpus_per_task", "> 0", self.data_cpus_per_task)


@dataclass(frozen=True)
class EvaluateConfig(TrackingSection, EvaluationHardwareSection, ProtocolSection, Serialised):
    """One evaluation (`pipeline.evaluation.evaluate`): which nets, which
    protocols, where."""

    # MLflow run ids, registered models (name/version, models:/name/version,
    # models:/name@alias), checkpoint folders or torchvision state dict files (.pth)
    models: tuple[str, ...] = option((), fingerprint=True)
    data: str = option("", fingerprint=True)  # prepared dataset; "": the first model's
    split: str = option("val", fingerprint=True)
    # Folder for the tables; None: evaluations/<run name>
    output: str | None = option(None, fingerprint=False)

    def __post_init__(self) -> None:
        require_name("run_name", self.run_name)
        as_tuple(self, "models")
        require(
            len(self.models) >= 1 and all(self.models), "models", "one or more models", self.models
        )
        self._check_protocols()
        require(bool(self.split), "split", "a split name such as 'val'", self.split)
        require(
            not self.ensemble or len(self.models) >= 2,
            "ensemble",
            "False with a single model (an ensemble needs two or more)",
            self.ensemble,
        )
        self._check_hardware()


__all__ = [
    "EVALUATION_PROTOCOLS",
    "SCALE_SETS",
    "EvaluateConfig",
    "EvaluationHardwareSection",
    "ProtocolSection",
    "check_protocols",
    "parse_scale_set",
]
