"""What every stage config shares: the fingerprint mark, validation, the
`--set key=value` parser, serialisation, and the tracking section.

A stage config (`pipeline.<stage>.config`) is a frozen dataclass built from
sections and checked in `__post_init__`, so a bad value fails in the driver,
before any Ray work, with a message naming the field. Every field is declared
with `option(...)`, which records on the field itself whether it changes the
stage's result (`fingerprint=True`: the data, the net, the recipe) or not
(`fingerprint=False`: hardware, memory, paths, names). The workflow's stage
fingerprints, the evaluation run's name and the sweep's checks all read that
one mark (`fingerprint_fields`); nobody keeps a second list.

Configs cross the Ray boundary as plain dicts (`to_dict` / `from_dict`) and
are logged to MLflow flat (`flat_params`) and as JSON (`to_json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Self

from pipeline.errors import ConfigError

FINGERPRINT = "fingerprint"  # the field metadata key every config field carries


def option(default: Any = MISSING, *, fingerprint: bool, default_factory: Any = MISSING) -> Any:
    """A config field that says whether it changes the stage's result."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={FINGERPRINT: fingerprint}
    )


def fingerprint_fields(config: Any) -> tuple[str, ...]:
    """The names of the fields of `config` (a config or its class) that change its result."""
    return tuple(f.name for f in dataclasses.fields(config) if f.metadata[FINGERPRINT])


class Serialised:
    """Plain dicts across the Ray boundary, JSON for MLflow: one way for every config."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def flat_params(self) -> dict[str, str]:
        """The config as flat MLflow params: what its run records."""
        return flat_params(self)

    def fingerprint_params(self) -> tuple[str, ...]:
        """The keys of `flat_params` that change the result: what a rerun under
        the same run name must match (`tracking.start_run` checks them)."""
        return fingerprint_fields(self)

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that change the result, as plain values: what a cache keys on."""
        values = self.to_dict()
        return {name: values[name] for name in fingerprint_fields(self)}


def settings_digest(value: Any) -> str:
    """A stable sha256 of plain settings (a fingerprint_dict, a stage view):
    what run names and the workflow cache key on."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def require(condition: bool, field_name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{field_name} must be {allowed}; got {value!r}")


# What a run name may not hold: it names an MLflow run (a quoted filter value)
# and a folder under storage_path and work_dir, which it must not leave.
_UNSAFE_NAME = re.compile(r"[/\\'\"`\x00-\x1f]|^\.|^$")


def require_name(field_name: str, value: str | None) -> None:
    """A run or sweep name: no path separators, quotes or control characters,
    not starting with a dot (".." would leave its folder)."""
    if value is not None:
        require(
            not _UNSAFE_NAME.search(value),
            field_name,
            "a name without / \\ quotes or control characters, not starting with '.'",
            value,
        )


def as_tuple(config: Any, *names: str) -> None:
    """JSON and Python callers give lists (or one string); the frozen config keeps tuples."""
    for name in names:
        value = getattr(config, name)
        object.__setattr__(config, name, (value,) if isinstance(value, str) else tuple(value))


@dataclass(frozen=True)
class TrackingSection:
    """Where a stage's run is recorded. None of it changes a result."""

    run_name: str | None = option(None, fingerprint=False)  # MLflow run; rerunning it resumes
    experiment: str = option("vggpipe", fingerprint=False)  # MLflow experiment
    # None: MLFLOW_TRACKING_URI, else ./mlflow.db
    tracking_uri: str | None = option(None, fingerprint=False)
    parent_run_id: str | None = option(None, fingerprint=False)  # run to nest under


def flat_params(config: Any) -> dict[str, str]:
    """A config as flat string params for MLflow (None as an empty string)."""
    return {
        key: "" if value is None else str(value)
        for key, value in dataclasses.asdict(config).items()
    }


# ---------------------------------------------------------------------------
# Training scales: one parser and one label for every stage


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


def train_scale_label(scale: tuple[int, int], *, sep: str | None = None) -> str:
    """A training scale as the paper writes it: 256 for fixed S, [256;512] when
    jittered; with `sep`, a name-safe form such as 256-512."""
    low, high = scale
    if low == high:
        return str(low)
    return f"{low}{sep}{high}" if sep else f"[{low};{high}]"


# ---------------------------------------------------------------------------
# --set key=value overrides


def split_values(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_value(text: str, annotation: Any, field_name: str) -> Any:
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if optional and text.lower() in ("", "none", "null"):
        return None
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: comma-separated, "" for none
        return tuple(split_values(text))
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
        changes[key] = parse_value(value.strip(), hints[key], key)
    return dataclasses.replace(config, **changes)


__all__ = [
    "FINGERPRINT",
    "ConfigError",
    "Serialised",
    "TrackingSection",
    "apply_overrides",
    "as_tuple",
    "fingerprint_fields",
    "flat_params",
    "option",
    "parse_train_scale",
    "parse_value",
    "require",
    "settings_digest",
    "split_values",
    "train_scale_label",
]
