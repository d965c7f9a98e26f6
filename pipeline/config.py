"""Typed, validated stage configs and the named recipes.

A config is a frozen dataclass checked in `__post_init__`, so a bad value fails
in the driver, before any Ray work, with a message naming the field. Recipes
are functions returning configs; the CLI takes a recipe name plus
`--set key=value` overrides. Configs cross the Ray boundary as plain dicts
(`to_dict` / `from_dict`) and are logged to MLflow flat (`flat_params`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from vgg.model import CONFIGS, INIT_SCHEMES, resolve_config

DECODE_PLACES = ("cpu", "device")


class ConfigError(ValueError):
    """A config value is out of its allowed range; the message names the field."""


class _Serialised:
    """Plain dicts across the Ray boundary, JSON for MLflow: one way for every config."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"


def _require(condition: bool, field_name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{field_name} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class TrainConfig(_Serialised):
    """One training run of the paper's recipe (PAPER.md section 2)."""

    recipe: str = "custom"  # the named recipe this config came from
    data: str = ""  # prepared dataset (preprocess output): local path or pyarrow.fs URI

    # The network (vgg.build_vgg)
    config: str = "A"  # Table 1 column: A, A-LRN, B, C, D, E
    width: float = 1.0  # channel multiplier; 1.0 is the paper's
    crop_size: int = 224  # training crop side, pixels; a multiple of 32
    dropout: float = 0.5  # on FC1 and FC2
    init: str = "gaussian"  # "gaussian" (N(0, init_std^2)), "xavier" or "kaiming" (torchvision's)
    init_std: float = 0.01
    init_from: str | None = None  # net A to copy from (MLflow run id or checkpoint path)
    resume_from: str | None = None  # same-config net to continue from (smaller S)

    # Training scale S: fixed when scale_min == scale_max, else jittered per image
    scale_min: int = 256  # pixels, shorter side
    scale_max: int = 256
    test_scale: int | None = (
        None  # Q of the per-epoch check; None: S, or the middle of [Smin, Smax]
    )

    # Optimisation
    epochs: int = 74  # most epochs; the paper stopped after 74
    global_batch_size: int = 256  # images per SGD step over all workers
    micro_batch_size: int | None = None  # images per forward pass; < per-worker share: accumulation
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_factor: float = 0.1  # lr multiplier when validation top-1 error stops improving
    lr_patience: int = 2  # epochs without improvement before the lr drops
    max_lr_reductions: int = (
        3  # the paper reduced three times; training stops after the next plateau
    )
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke runs)
    colour_shift_std: float = 0.1  # AlexNet's PCA colour noise; 0 turns it off
    seed: int = 0

    # Hardware
    num_workers: int = 1  # data-parallel training workers (one per GPU)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_cpus_per_task: float = 1.0  # CPUs of each Ray Data decode task
    decode_on: str = "cpu"  # "cpu" (Ray Data tasks) or "device" (nvJPEG on the GPU)
    bf16: bool = False  # bf16 autocast
    channels_last: bool = False
    compile: bool = False  # torch.compile the model

    # Bookkeeping
    run_name: str | None = None  # Ray Train run and MLflow run name; rerunning it resumes
    storage_path: str = "runs"  # checkpoints: local folder or pyarrow.fs URI
    experiment: str = "vggpipe"  # MLflow experiment
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else ./mlflow.db
    parent_run_id: str | None = None  # MLflow run to nest under (a workflow or sweep)
    keep_checkpoints: int = 2  # the best this many by validation error, plus the latest
    max_failures: int = 2  # worker failures survived by restarting from the last checkpoint

    def __post_init__(self) -> None:
        allowed = ", ".join(CONFIGS)
        try:
            object.__setattr__(self, "config", resolve_config(self.config))
        except ValueError:
            raise ConfigError(f"config must be one of {allowed}; got {self.config!r}") from None
        _require(self.width > 0, "width", "> 0", self.width)
        _require(
            self.crop_size >= 32 and self.crop_size % 32 == 0,
            "crop_size",
            "a positive multiple of 32",
            self.crop_size,
        )
        _require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        _require(self.init in INIT_SCHEMES, "init", f"one of {', '.join(INIT_SCHEMES)}", self.init)
        _require(self.init_std > 0, "init_std", "> 0", self.init_std)
        _require(
            self.scale_min >= self.crop_size,
            "scale_min",
            f">= crop_size ({self.crop_size})",
            self.scale_min,
        )
        _require(
            self.scale_max >= self.scale_min,
            "scale_max",
            f">= scale_min ({self.scale_min})",
            self.scale_max,
        )
        if self.test_scale is not None:
            _require(
                self.test_scale >= self.crop_size,
                "test_scale",
                f">= crop_size ({self.crop_size})",
                self.test_scale,
            )
        _require(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _require(self.num_workers >= 1, "num_workers", ">= 1", self.num_workers)
        _require(
            self.global_batch_size >= self.num_workers
            and self.global_batch_size % self.num_workers == 0,
            "global_batch_size",
            f"a multiple of num_workers ({self.num_workers}) so that it splits evenly",
            self.global_batch_size,
        )
        if self.micro_batch_size is not None:
            _require(
                self.micro_batch_size >= 1
                and self.batch_size_per_worker % self.micro_batch_size == 0,
                "micro_batch_size",
                f"a divisor of the per-worker batch ({self.batch_size_per_worker})",
                self.micro_batch_size,
            )
        _require(self.lr > 0, "lr", "> 0", self.lr)
        _require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        _require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _require(0 < self.lr_factor < 1, "lr_factor", "in (0, 1)", self.lr_factor)
        _require(self.lr_patience >= 0, "lr_patience", ">= 0", self.lr_patience)
        _require(self.max_lr_reductions >= 0, "max_lr_reductions", ">= 0", self.max_lr_reductions)
        if self.max_steps_per_epoch is not None:
            _require(
                self.max_steps_per_epoch >= 1,
                "max_steps_per_epoch",
                ">= 1",
                self.max_steps_per_epoch,
            )
        _require(self.colour_shift_std >= 0, "colour_shift_std", ">= 0", self.colour_shift_std)
        _require(self.cpus_per_worker >= 0, "cpus_per_worker", ">= 0", self.cpus_per_worker)
        _require(self.data_cpus_per_task > 0, "data_cpus_per_task", "> 0", self.data_cpus_per_task)
        _require(
            self.decode_on in DECODE_PLACES,
            "decode_on",
            f"one of {', '.join(DECODE_PLACES)}",
            self.decode_on,
        )
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1", self.keep_checkpoints)
        _require(
            self.max_failures >= -1, "max_failures", ">= -1 (-1: unlimited)", self.max_failures
        )
        if self.init_from is not None:
            _require(
                self.config != "A",
                "init_from",
                "unset for config A (the deeper nets copy from net A)",
                self.init_from,
            )
        _require(
            not (self.init_from and self.resume_from),
            "resume_from",
            "unset when init_from is set (one starting point)",
            self.resume_from,
        )

    @property
    def batch_size_per_worker(self) -> int:
        return self.global_batch_size // self.num_workers

    @property
    def train_scale(self) -> int | tuple[int, int]:
        """S for `vgg.transforms`: an int, or (Smin, Smax) when jittering."""
        return (
            self.scale_min if self.scale_min == self.scale_max else (self.scale_min, self.scale_max)
        )

    @property
    def check_scale(self) -> int:
        """Q of the per-epoch validation: as given, else S, else the middle of [Smin, Smax]."""
        return self.test_scale or (self.scale_min + self.scale_max) // 2

    @property
    def name(self) -> str:
        return self.run_name or self.recipe


def flat_params(config: Any) -> dict[str, str]:
    """A config as flat string params for MLflow (None as an empty string)."""
    return {
        key: "" if value is None else str(value)
        for key, value in dataclasses.asdict(config).items()
    }


# ---------------------------------------------------------------------------
# --set key=value overrides


def _parse_value(text: str, annotation: Any, field_name: str) -> Any:
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if optional and text.lower() in ("", "none", "null"):
        return None
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: comma-separated, "" for none
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return hint(text)
    except ValueError:
        raise ConfigError(f"{field_name} takes a {hint.__name__}; got {text!r}") from None


def apply_overrides(config: Any, assignments: list[str]) -> Any:
    """`config` with `key=value` assignments applied (values parsed by field type)."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set takes key=value; got {assignment!r}")
        if key not in fields:
            raise ConfigError(
                f"unknown config field {key!r}; fields are {', '.join(sorted(fields))}"
            )
        changes[key] = _parse_value(value.strip(), hints[key], key)
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------
# Named recipes

PAPER_CONFIGS = ("a", "a-lrn", "b", "c", "d", "e")


def _paper(config: str, stage: str, **overrides: Any) -> TrainConfig:
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


def _demo(**overrides: Any) -> TrainConfig:
    """Narrow nets on the demo digits, on a laptop CPU. torchvision's (He) init:
    the paper's gaussian init needs its long schedule, and net A, to get going."""
    return TrainConfig(
        recipe="demo",
        config="A",
        width=0.25,
        crop_size=32,
        scale_min=36,
        scale_max=36,
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
        **overrides,
    )


def _smoke(**overrides: Any) -> TrainConfig:
    """The smallest run that exercises every part: seconds of training."""
    return dataclasses.replace(
        _demo(),
        recipe="smoke",
        width=0.0625,
        epochs=2,
        max_steps_per_epoch=4,
        num_workers=1,
        **overrides,
    )


def _recipes() -> dict[str, Callable[..., TrainConfig]]:
    recipes: dict[str, Callable[..., TrainConfig]] = {"demo": _demo, "smoke": _smoke}
    for config in PAPER_CONFIGS:
        for stage in ("256", "384", "jitter"):
            recipes[f"paper-{config}-{stage}"] = lambda c=config, s=stage, **kw: _paper(c, s, **kw)
    return recipes


RECIPES = _recipes()


def _named(recipes: dict[str, Callable[..., Any]], name: str, kind: str) -> Any:
    """The config recipe `name` of `recipes` returns; an unknown name lists the known."""
    if name not in recipes:
        raise ConfigError(f"unknown {kind} {name!r}; recipes are {', '.join(recipes)}")
    return recipes[name]()


def recipe(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """The named recipe's config with `key=value` overrides applied."""
    return apply_overrides(_named(RECIPES, name, "recipe"), overrides or [])


__all__ = [
    "RECIPES",
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "flat_params",
    "recipe",
]


# ---------------------------------------------------------------------------
# Evaluation (PAPER.md section 3)

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
    _require(all(q > 0 for q in scales), "scales", "positive test scales Q", text)
    return tuple(sorted(set(scales)))


@dataclass(frozen=True)
class EvaluateConfig(_Serialised):
    """One evaluation (`pipeline.evaluate`): which nets, which protocols, where."""

    # MLflow run ids, registered models (name/version, models:/name/version,
    # models:/name@alias), checkpoint folders or torchvision state dict files (.pth)
    models: tuple[str, ...] = ()
    data: str = ""  # prepared dataset; "" takes the first model's training data
    split: str = "val"

    protocols: tuple[str, ...] = EVALUATION_PROTOCOLS
    # Each entry is one table block: "single" (Q = S, or the middle of [Smin, Smax]),
    # "multi" (the paper's three Q from S), or explicit Q as "256,384,512".
    scales: tuple[str, ...] = SCALE_SETS
    scale_step: int = 32  # fixed S: multi-scale Q = S - step, S, S + step (pixels)
    ensemble: bool = False  # also the nets' averaged posteriors (needs two or more)
    grid: int = 5  # multi-crop: grid x grid crops, each also flipped
    limit: int | None = None  # evaluate only the split's first `limit` images (quick checks)
    predictions: bool = False  # also write each image's top-5 classes (predictions.parquet)

    # Hardware
    batch_size: int = 64  # most network inputs (crops or whole images) per forward pass
    # Dense evaluation: most equal-size whole images per forward pass (each with its
    # flip). None: batch_size // 2 on a GPU, 1 on a CPU, where batching whole images
    # measured no faster than one at a time (benchmarks/evaluate.py).
    dense_batch_size: int | None = None
    workers: int | None = None  # Ray tasks sharing the images; None: one per GPU, else 1
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    cpus_per_worker: float = 1.0
    data_cpus_per_task: float = 1.0  # CPUs of each Ray Data decode task
    bf16: bool = False  # bf16 autocast on the device

    # Bookkeeping
    output: str | None = None  # folder for the tables; None: evaluations/<run name>
    run_name: str | None = None  # MLflow evaluation run (ensembles, several nets, files)
    experiment: str = "vggpipe"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else ./mlflow.db
    parent_run_id: str | None = None

    def __post_init__(self) -> None:
        # JSON and Python callers give lists; the frozen config keeps tuples.
        for name in ("models", "protocols", "scales"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        _require(
            len(self.models) >= 1 and all(self.models), "models", "one or more models", self.models
        )
        unknown = [p for p in self.protocols if p not in EVALUATION_PROTOCOLS]
        _require(
            bool(self.protocols) and not unknown,
            "protocols",
            f"one or more of {', '.join(EVALUATION_PROTOCOLS)}",
            self.protocols,
        )
        _require(bool(self.scales), "scales", "one or more scale sets", self.scales)
        canonical = []
        for entry in self.scales:
            parsed = parse_scale_set(entry)
            canonical.append(parsed if isinstance(parsed, str) else ",".join(map(str, parsed)))
        object.__setattr__(self, "scales", tuple(canonical))
        _require(bool(self.split), "split", "a split name such as 'val'", self.split)
        _require(self.scale_step >= 1, "scale_step", ">= 1", self.scale_step)
        _require(
            not self.ensemble or len(self.models) >= 2,
            "ensemble",
            "False with a single model (an ensemble needs two or more)",
            self.ensemble,
        )
        _require(self.grid >= 2, "grid", ">= 2 (corners and centre need a grid)", self.grid)
        if self.limit is not None:
            _require(self.limit >= 1, "limit", ">= 1 or None", self.limit)
        _require(self.batch_size >= 2, "batch_size", ">= 2", self.batch_size)
        if self.dense_batch_size is not None:
            _require(
                self.dense_batch_size >= 1,
                "dense_batch_size",
                ">= 1 or None",
                self.dense_batch_size,
            )
        if self.workers is not None:
            _require(self.workers >= 1, "workers", ">= 1 or None", self.workers)
        _require(self.cpus_per_worker >= 0, "cpus_per_worker", ">= 0", self.cpus_per_worker)
        _require(self.data_cpus_per_task > 0, "data_cpus_per_task", "> 0", self.data_cpus_per_task)

    @property
    def scale_sets(self) -> tuple[str | tuple[int, ...], ...]:
        """`scales` parsed: "single", "multi" or a tuple of Q."""
        return tuple(parse_scale_set(entry) for entry in self.scales)


# ---------------------------------------------------------------------------
# Sweeps (pipeline.tune): a search space over training configs, Ray Tune, ASHA

# TrainConfig fields a sweep sets itself (lr and S come from the search space;
# run names, nesting and storage are per trial) or that must be one value for
# every trial (epochs is ASHA's budget; the data and the MLflow store are shared).
SWEEP_OWNED_FIELDS = (
    "lr",
    "scale_min",
    "scale_max",
    "epochs",
    "run_name",
    "parent_run_id",
    "storage_path",
    "tracking_uri",
    "experiment",
    "data",
)


def parse_train_scale(text: str) -> tuple[int, int]:
    """A training scale as (Smin, Smax): "256" is fixed S, "256:512" (or
    "256-512") is S jittered in [256, 512]."""
    text = str(text).strip()
    low, sep, high = text.replace("-", ":").partition(":")
    try:
        scale = (int(low), int(high if sep else low))
    except ValueError:
        raise ConfigError(
            f"scales takes S or Smin:Smax in pixels, like 256 or 256:512; got {text!r}"
        ) from None
    return scale


def train_scale_label(scale: tuple[int, int]) -> str:
    """A training scale as the paper writes it: 256 for fixed S, [256;512] when jittered."""
    low, high = scale
    return str(low) if low == high else f"[{low};{high}]"


@dataclass(frozen=True)
class TuneConfig(_Serialised):
    """A Ray Tune sweep of training runs: a grid (or log-uniform samples) of
    learning rates, a grid of training scales S, and grids of any other
    TrainConfig field; ASHA stops poor trials early on validation top-1 error."""

    recipe: str = "custom"  # the named sweep recipe this config came from
    name: str = "sweep"  # Tune experiment folder and MLflow parent run; running it again resumes
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # every trial starts here

    # The search space; trials are the product of the grids, times num_samples
    lrs: tuple[float, ...] = ()  # learning rates, a grid; empty: draw from lr_range
    lr_range: tuple[float, float] | None = None  # (low, high): log-uniform draws
    scales: tuple[tuple[int, int], ...] = ()  # (Smin, Smax) each, (S, S) when fixed; empty: train's
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (TrainConfig field, its values) pairs
    num_samples: int = 1  # Tune's num_samples: each grid point is run (or drawn) this many times
    seed: int = 0  # of the learning-rate draws

    # ASHA, on validation top-1 error, with the epoch as its clock
    grace_period: int = 1  # epochs every trial runs before it may be stopped
    reduction_factor: float = 2.0  # each rung keeps the best 1 / reduction_factor of trials

    # Resources
    max_concurrent_trials: int | None = None  # None: as many as the cluster's resources fit
    trial_driver_cpus: float = 0.1  # the Tune trial only drives its Train run; it mostly waits

    # The model registry
    registered_model: str | None = None  # registered model name; None: the sweep name
    alias: str = "champion"  # the registry alias set on the best trial's model version

    def __post_init__(self) -> None:
        # JSON and Python callers give lists; the frozen config keeps tuples.
        object.__setattr__(self, "lrs", tuple(float(lr) for lr in self.lrs))
        if self.lr_range is not None:
            object.__setattr__(self, "lr_range", tuple(float(lr) for lr in self.lr_range))
        object.__setattr__(
            self,
            "scales",
            tuple(
                parse_train_scale(s) if isinstance(s, str | int) else (int(s[0]), int(s[1]))
                for s in self.scales
            ),
        )
        object.__setattr__(
            self, "grid", tuple((str(field), tuple(values)) for field, values in self.grid)
        )
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainConfig.from_dict(self.train))

        _require(
            bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
            "name",
            "a non-empty folder name (no '/')",
            self.name,
        )
        _require(
            bool(self.lrs) != (self.lr_range is not None),
            "lrs",
            "a grid of learning rates, or empty with lr_range set (one of the two)",
            self.lrs,
        )
        _require(all(lr > 0 for lr in self.lrs), "lrs", "learning rates > 0", self.lrs)
        if self.lr_range is not None:
            _require(
                len(self.lr_range) == 2 and 0 < self.lr_range[0] < self.lr_range[1],
                "lr_range",
                "(low, high) with 0 < low < high",
                self.lr_range,
            )
        for low, high in self.scales:
            _require(
                self.train.crop_size <= low <= high,
                "scales",
                f"S or Smin:Smax with crop_size ({self.train.crop_size}) <= Smin <= Smax",
                self.scales,
            )
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for field_name, values in self.grid:
            _require(
                field_name in fields and field_name not in SWEEP_OWNED_FIELDS,
                "grid",
                "TrainConfig fields other than " + ", ".join(SWEEP_OWNED_FIELDS),
                field_name,
            )
            _require(len(values) >= 1, "grid", f"one or more values for {field_name}", values)
            for value in values:  # every grid point must make a valid TrainConfig
                dataclasses.replace(self.train, **{field_name: value})
        _require(
            len({field_name for field_name, _ in self.grid}) == len(self.grid),
            "grid",
            "each field once",
            self.grid,
        )
        _require(self.num_samples >= 1, "num_samples", ">= 1", self.num_samples)
        _require(
            self.train.epochs >= 2,
            "train.epochs",
            ">= 2 (ASHA stops trials at rungs before the last epoch)",
            self.train.epochs,
        )
        _require(
            1 <= self.grace_period < self.train.epochs,
            "grace_period",
            f"in [1, train.epochs) = [1, {self.train.epochs})",
            self.grace_period,
        )
        _require(self.reduction_factor > 1, "reduction_factor", "> 1", self.reduction_factor)
        if self.max_concurrent_trials is not None:
            _require(
                self.max_concurrent_trials >= 1,
                "max_concurrent_trials",
                ">= 1 or None",
                self.max_concurrent_trials,
            )
        _require(self.trial_driver_cpus > 0, "trial_driver_cpus", "> 0", self.trial_driver_cpus)
        _require(
            self.registered_model is None or bool(self.registered_model.strip()),
            "registered_model",
            "a non-empty name or None",
            self.registered_model,
        )
        _require(
            bool(self.alias) and not self.alias.isdigit(),
            "alias",
            "a non-empty name that is not a version number",
            self.alias,
        )

    @property
    def model_name(self) -> str:
        return self.registered_model or self.name

    def flat_params(self) -> dict[str, str]:
        """The sweep's settings, and the base training config as train.FIELD, as
        flat MLflow params."""
        params = {
            key: "" if value is None else str(value)
            for key, value in dataclasses.asdict(self).items()
            if key not in ("train", "grid")
        }
        params["grid"] = "; ".join(
            f"{field_name}={','.join(map(str, values))}" for field_name, values in self.grid
        )
        params.update({f"train.{key}": value for key, value in flat_params(self.train).items()})
        return params


def _split_values(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def apply_tune_overrides(config: TuneConfig, assignments: list[str]) -> TuneConfig:
    """`config` with `key=value` assignments applied: sweep fields by name
    (lists comma-separated: lrs=0.01,0.001  scales=256,256:512  lr_range=1e-3:1e-1),
    `grid.FIELD=v1,v2` for a grid over a training field, and training fields by
    name (or as train.FIELD) for the base config every trial starts from."""
    hints = typing.get_type_hints(TuneConfig)
    sweep_fields = {f.name for f in dataclasses.fields(TuneConfig)} - {"train", "grid"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, Any] = {}
    grid = dict(config.grid)
    train_assignments: list[str] = []
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep:
            raise ConfigError(f"--set takes key=value; got {assignment!r}")
        if key.startswith("grid."):
            field_name = key.removeprefix("grid.")
            if field_name not in train_fields:
                raise ConfigError(f"grid.{field_name}: {field_name!r} is not a training field")
            train_hints = typing.get_type_hints(TrainConfig)
            grid[field_name] = tuple(
                _parse_value(v, train_hints[field_name], field_name) for v in _split_values(value)
            )
        elif key == "lrs":
            try:
                changes["lrs"] = tuple(float(v) for v in _split_values(value))
            except ValueError:
                raise ConfigError(f"lrs takes comma-separated numbers; got {value!r}") from None
        elif key == "lr_range":
            if value.lower() in ("", "none"):
                changes["lr_range"] = None
                continue
            low, colon, high = value.partition(":")
            try:
                changes["lr_range"] = (float(low), float(high if colon else ""))
            except ValueError:
                raise ConfigError(
                    f"lr_range takes low:high like 1e-3:1e-1; got {value!r}"
                ) from None
        elif key == "scales":
            changes["scales"] = tuple(parse_train_scale(v) for v in _split_values(value))
        elif key in sweep_fields:
            changes[key] = _parse_value(value, hints[key], key)
        elif key.removeprefix("train.") in train_fields:
            train_assignments.append(f"{key.removeprefix('train.')}={value}")
        else:
            raise ConfigError(
                f"unknown field {key!r}; sweep fields are {', '.join(sorted(sweep_fields))}, "
                "grid.FIELD, and any training field (train.FIELD)"
            )
    train = apply_overrides(config.train, train_assignments)
    return dataclasses.replace(config, train=train, grid=tuple(grid.items()), **changes)


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
    (fixed S = 36 and S jittered in [36; 48]), ASHA from epoch 2 with rungs at
    epochs 2, 6 and 18."""
    return TuneConfig(
        recipe="tune-demo",
        name="tune-demo",
        train=_demo(),
        lr_range=(1e-4, 3e-2),
        num_samples=4,
        scales=((36, 36), (36, 48)),
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
        train=_paper("a", "256"),
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


def tune_recipe(name: str, overrides: list[str] | None = None) -> TuneConfig:
    """The named sweep recipe's config with `key=value` overrides applied."""
    return apply_tune_overrides(_named(TUNE_RECIPES, name, "sweep recipe"), overrides or [])


# ---------------------------------------------------------------------------
# The whole recipe (pipeline.workflow)

WORKFLOW_TRAIN_RECIPES = ("paper", "demo", "smoke")


@dataclass(frozen=True)
class WorkflowConfig(_Serialised):
    """The paper's whole recipe as one run of stages (`pipeline.run`): the data,
    which nets are trained from which, how each is evaluated, where it all goes.
    Net names in the graph are CONFIG-S ("D-256", "D-384", "D-256-512"), with
    "-random" for a net trained from random weights beside the same net from A."""

    recipe: str = "custom"  # the named workflow recipe this config came from
    # ILSVRC-2012 as users have it (folders or the official tars), or a prepared
    # dataset (a preprocess output, with manifest.json): local path or pyarrow.fs URI
    data: str = ""
    # Shards, checkpoints and tables: a local folder, or shared storage (NFS path,
    # s3://...) that every node of a cluster reaches at the same name
    work_dir: str = "vggpipe-work"
    run_name: str | None = None  # the MLflow parent run; None: "<recipe>-<digest of settings>"
    experiment: str = "vggpipe"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else ./mlflow.db

    # Preprocessing (pipeline.preprocess); ignored when `data` is already prepared
    max_short_side: int = 512  # pixels: must cover the largest training and test scale
    shard_rows: int = 1000
    stats_images: int = 10_000

    # The nets (PAPER.md section 2, Table 3). Net A is trained from random weights
    # at base_scale; `from_a` nets start from it, `random_init` ones from random.
    train_recipe: str = (
        "paper"  # "paper": each net's paper-<config>-<S> recipe; else one base recipe
    )
    base_scale: int = 256  # S of net A and of the nets started from it
    from_a: tuple[str, ...] = ("B", "C", "D", "E")
    random_init: tuple[str, ...] = ("A-LRN",)
    # Each of these is fine-tuned at large_scale from its base-scale net, then
    # jittered in jitter_scale from the large-scale one (section 3.1)
    scale_configs: tuple[str, ...] = ("C", "D", "E")
    large_scale: int | None = 384  # None: no large-scale (nor jittered) nets
    jitter_scale: str | None = "256:512"  # Smin:Smax; None: no jittered nets
    base_epochs: int | None = None  # None: the training recipe's
    finetune_epochs: int | None = None  # of the large-scale and jittered nets; None: the recipe's
    # TrainConfig fields for every net: hardware (num_workers=16, use_gpu=true) or recipe
    train_overrides: tuple[str, ...] = ()

    # Evaluation (pipeline.evaluate) of every net, then of the ensemble
    protocols: tuple[str, ...] = ("dense", "multi-crop", "dense+multi-crop")
    scales: tuple[str, ...] = SCALE_SETS
    scale_step: int = 32  # fixed S: multi-scale Q = S - step, S, S + step
    ensemble: tuple[str, ...] = ("D-256-512", "E-256-512")  # net names; () for none
    # EvaluateConfig fields for every evaluation: grid=5, limit=1000, workers=8, batch_size
    eval_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "from_a",
            "random_init",
            "scale_configs",
            "train_overrides",
            "protocols",
            "scales",
            "ensemble",
            "eval_overrides",
        ):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
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
        _require(
            self.train_recipe in WORKFLOW_TRAIN_RECIPES,
            "train_recipe",
            f"one of {', '.join(WORKFLOW_TRAIN_RECIPES)}",
            self.train_recipe,
        )
        _require(
            "A" not in self.from_a,
            "from_a",
            "deeper configs than A (A is their start)",
            self.from_a,
        )
        trained = {"A", *self.from_a, *self.random_init}
        _require(
            all(c in trained for c in self.scale_configs),
            "scale_configs",
            "configs trained at base_scale (A, from_a, random_init): their base-scale net "
            "is the start",
            self.scale_configs,
        )
        _require(self.base_scale >= 32, "base_scale", ">= 32 pixels", self.base_scale)
        if self.large_scale is not None:
            _require(
                self.large_scale > self.base_scale,
                "large_scale",
                f"> base_scale ({self.base_scale}) or None",
                self.large_scale,
            )
        if self.jitter_scale is not None:
            low, high = parse_train_scale(self.jitter_scale)
            _require(
                low < high and self.large_scale is not None,
                "jitter_scale",
                "Smin:Smax with Smin < Smax, with large_scale set (the jittered nets start "
                "from the large-scale ones)",
                self.jitter_scale,
            )
        _require(self.max_short_side >= 16, "max_short_side", ">= 16", self.max_short_side)
        _require(self.shard_rows >= 1, "shard_rows", ">= 1", self.shard_rows)
        _require(self.stats_images >= 1, "stats_images", ">= 1", self.stats_images)
        for name in ("base_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if value is not None:
                _require(value >= 1, name, ">= 1 or None", value)
        unknown = [p for p in self.protocols if p not in EVALUATION_PROTOCOLS]
        _require(
            bool(self.protocols) and not unknown,
            "protocols",
            f"one or more of {', '.join(EVALUATION_PROTOCOLS)}",
            self.protocols,
        )
        for entry in self.scales:
            parse_scale_set(entry)
        _require(self.scale_step >= 1, "scale_step", ">= 1", self.scale_step)
        _require(
            len(self.ensemble) != 1, "ensemble", "two or more net names, or none", self.ensemble
        )
        # Overrides fail here, not hours later at the stage that uses them.
        apply_overrides(TrainConfig(), list(self.train_overrides))
        apply_overrides(EvaluateConfig(models=("x",)), list(self.eval_overrides))

    @property
    def jitter(self) -> tuple[int, int] | None:
        return parse_train_scale(self.jitter_scale) if self.jitter_scale else None


def _workflow_paper(**overrides: Any) -> WorkflowConfig:
    """The paper: A and A-LRN from random, B-E from A at S = 256; C, D, E at 384
    from 256 and jittered in [256; 512] from 384; the D + E ensemble."""
    return WorkflowConfig(recipe="paper", **overrides)


def _workflow_demo(**overrides: Any) -> WorkflowConfig:
    """The paper's graph scaled to the demo digits and two CPU cores: the demo
    recipe's narrow nets on 32-pixel crops, S = 36 for 256 (the paper's crop to
    S ratio), 54 for 384 and [36; 72] for [256; 512]. Net D is trained from A and
    also from random weights, then at S = 54 and jittered; all fit in ~10
    minutes here (see README)."""
    return WorkflowConfig(
        recipe="demo",
        train_recipe="demo",
        max_short_side=80,
        shard_rows=500,
        base_scale=36,
        from_a=("D",),
        random_init=("D",),
        scale_configs=("D",),
        large_scale=54,
        jitter_scale="36:72",
        base_epochs=10,
        finetune_epochs=4,
        # The digits' 359 validation images make the per-epoch error noisy (a few
        # points up and down): with the demo recipe's patience of one epoch, one
        # noisy epoch cut D-from-A's lr twice by epoch 5 and stalled it.
        # One worker with the whole CPU: two DDP workers on two cores run at 0.43x
        # the images/s of one (benchmarks/scaling.py); data-parallel training is
        # what the tests' multi-node runs and `vggpipe train --recipe demo` show.
        train_overrides=("lr_patience=3", "num_workers=1", "cpus_per_worker=1"),
        scale_step=4,
        ensemble=("D-36", "D-36-72"),
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


def workflow_recipe(name: str, overrides: list[str] | None = None) -> WorkflowConfig:
    """The named workflow recipe's config with `key=value` overrides applied."""
    return apply_overrides(_named(WORKFLOW_RECIPES, name, "workflow recipe"), overrides or [])
