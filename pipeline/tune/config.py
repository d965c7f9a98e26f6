"""The sweep's config (`pipeline.tune`): a search space over training configs,
Ray Tune, ASHA and the model registry. Every field says whether it changes the
sweep's result (`pipeline.config.option`); the base training config's own
fields carry their marks."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config import (
    ConfigError,
    Serialised,
    TrackingSection,
    apply_overrides,
    fingerprint_fields,
    flat_params,
    option,
    param_value,
    parse_train_scale,
    parse_value,
    require,
    require_name,
    split_values,
    train_scale_label,
)
from pipeline.train.config import TrainConfig

# TrainConfig fields a sweep sets itself: the search space (lr and S) and ASHA's
# budget (epochs), one dataset for every trial, and each trial's own run
# bookkeeping (the tracking section and its checkpoint folder).
SEARCHED_FIELDS = ("lr", "scale_min", "scale_max", "epochs")
SWEEP_OWNED_FIELDS = (
    *SEARCHED_FIELDS,
    "data",
    "storage_path",
    *(f.name for f in dataclasses.fields(TrackingSection)),
)


@dataclass(frozen=True)
class TuneConfig(Serialised):
    """A Ray Tune sweep of training runs: a grid (or log-uniform samples) of
    learning rates, a grid of training scales S, and grids of any other
    TrainConfig field; ASHA stops poor trials early on validation top-1 error."""

    recipe: str = option(
        "custom", fingerprint=False
    )  # the named sweep recipe this config came from
    name: str = option(
        "sweep", fingerprint=False
    )  # Tune experiment folder and MLflow parent run; running it again resumes
    train: TrainConfig = option(
        default_factory=TrainConfig, fingerprint=True
    )  # every trial starts here

    # The search space; trials are the product of the grids, times num_samples
    lrs: tuple[float, ...] = option(
        (), fingerprint=True
    )  # learning rates, a grid; empty: draw from lr_range
    lr_range: tuple[float, float] | None = option(
        None, fingerprint=True
    )  # (low, high): log-uniform draws
    scales: tuple[tuple[int, int], ...] = option(
        (), fingerprint=True
    )  # (Smin, Smax) each, (S, S) when fixed; empty: train's
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = option(
        (), fingerprint=True
    )  # (TrainConfig field, its values) pairs
    num_samples: int = option(
        1, fingerprint=True
    )  # Tune's num_samples: each grid point is run (or drawn) this many times
    seed: int = option(0, fingerprint=True)  # of the learning-rate draws

    # ASHA, on validation top-1 error, with the epoch as its clock
    grace_period: int = option(
        1, fingerprint=True
    )  # epochs every trial runs before it may be stopped
    reduction_factor: float = option(
        2.0, fingerprint=True
    )  # each rung keeps the best 1 / reduction_factor of trials

    # Resources
    max_concurrent_trials: int | None = option(
        None, fingerprint=False
    )  # None: as many as the cluster's resources fit
    trial_driver_cpus: float = option(
        0.1, fingerprint=False
    )  # the Tune trial only drives its Train run; it mostly waits

    # The model registry
    registered_model: str | None = option(
        None, fingerprint=False
    )  # registered model name; None: the sweep name
    alias: str = option(
        "champion", fingerprint=False
    )  # the registry alias set on the best trial's model version

    def __post_init__(self) -> None:
        require_name("name", self.name)
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

        require(
            bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
            "name",
            "a non-empty folder name (no '/')",
            self.name,
        )
        require(
            bool(self.lrs) != (self.lr_range is not None),
            "lrs",
            "a grid of learning rates, or empty with lr_range set (one of the two)",
            self.lrs,
        )
        require(all(lr > 0 for lr in self.lrs), "lrs", "learning rates > 0", self.lrs)
        if self.lr_range is not None:
            require(
                len(self.lr_range) == 2 and 0 < self.lr_range[0] < self.lr_range[1],
                "lr_range",
                "(low, high) with 0 < low < high",
                self.lr_range,
            )
        for low, high in self.scales:
            require(
                self.train.crop_size <= low <= high,
                "scales",
                f"S or Smin:Smax with crop_size ({self.train.crop_size}) <= Smin <= Smax",
                self.scales,
            )
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for field_name, values in self.grid:
            require(
                field_name in fields and field_name not in SWEEP_OWNED_FIELDS,
                "grid",
                "TrainConfig fields other than " + ", ".join(SWEEP_OWNED_FIELDS),
                field_name,
            )
            require(len(values) >= 1, "grid", f"one or more values for {field_name}", values)
            for value in values:  # every grid point must make a valid TrainConfig
                dataclasses.replace(self.train, **{field_name: value})
        require(
            len({field_name for field_name, _ in self.grid}) == len(self.grid),
            "grid",
            "each field once",
            self.grid,
        )
        require(self.num_samples >= 1, "num_samples", ">= 1", self.num_samples)
        require(
            self.train.epochs >= 2,
            "train.epochs",
            ">= 2 (ASHA stops trials at rungs before the last epoch)",
            self.train.epochs,
        )
        require(
            1 <= self.grace_period < self.train.epochs,
            "grace_period",
            f"in [1, train.epochs) = [1, {self.train.epochs})",
            self.grace_period,
        )
        require(self.reduction_factor > 1, "reduction_factor", "> 1", self.reduction_factor)
        if self.max_concurrent_trials is not None:
            require(
                self.max_concurrent_trials >= 1,
                "max_concurrent_trials",
                ">= 1 or None",
                self.max_concurrent_trials,
            )
        require(self.trial_driver_cpus > 0, "trial_driver_cpus", "> 0", self.trial_driver_cpus)
        require(
            self.registered_model is None or bool(self.registered_model.strip()),
            "registered_model",
            "a non-empty name or None",
            self.registered_model,
        )
        require(
            bool(self.alias) and not self.alias.isdigit(),
            "alias",
            "a non-empty name that is not a version number",
            self.alias,
        )
        require(
            self.train.register_as is None,
            "register_as",
            "unset in a sweep (it registers its best trial as registered_model@alias)",
            self.train.register_as,
        )

    @property
    def model_name(self) -> str:
        return self.registered_model or self.name

    def flat_params(self, form: Callable[[Any], str] | None = None) -> dict[str, str]:
        """The sweep's settings, and the base training config as train.FIELD, as
        flat MLflow params; lists as --set writes them (scales 36,36:44,
        lr_range 0.001:0.1, grid width=0.5,1; depth=...)."""
        form = form or param_value
        params = {
            key: form(value)
            for key, value in dataclasses.asdict(self).items()
            if key not in ("train", "grid")
        }
        if form is param_value:
            params["scales"] = ",".join(train_scale_label(s, sep=":") for s in self.scales)
            low_high = self.lr_range
            params["lr_range"] = f"{low_high[0]}:{low_high[1]}" if low_high else ""
        params["grid"] = "; ".join(
            f"{field_name}={','.join(map(str, values))}" for field_name, values in self.grid
        )
        train = flat_params(self.train, form)
        params.update({f"train.{key}": value for key, value in train.items()})
        return params

    def fingerprint_params(self) -> tuple[str, ...]:
        """The keys of `flat_params` that change the sweep's result: a rerun may
        differ in the others (more trials at once, another registry name)."""
        own = [name for name in fingerprint_fields(self) if name != "train"]
        return (*own, *(f"train.{name}" for name in fingerprint_fields(TrainConfig)))


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
                parse_value(v, train_hints[field_name], field_name) for v in split_values(value)
            )
        elif key == "lrs":
            try:
                changes["lrs"] = tuple(float(v) for v in split_values(value))
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
            changes["scales"] = tuple(parse_train_scale(v) for v in split_values(value))
        elif key in sweep_fields:
            changes[key] = parse_value(value, hints[key], key)
        elif key.removeprefix("train.") in train_fields:
            train_assignments.append(f"{key.removeprefix('train.')}={value}")
        else:
            raise ConfigError(
                f"unknown field {key!r}; sweep fields are {', '.join(sorted(sweep_fields))}, "
                "grid.FIELD, and any training field (train.FIELD)"
            )
    train = apply_overrides(config.train, train_assignments)
    return dataclasses.replace(config, train=train, grid=tuple(grid.items()), **changes)
