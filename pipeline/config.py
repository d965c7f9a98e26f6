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
are logged to MLflow flat (`flat_params`) and as JSON (`to_json`). A config
file (`vggpipe STAGE --config FILE`) is that JSON, or the same fields in YAML,
whole or in part (`read_config_file`, `apply_values`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Self

from pipeline.errors import ConfigError, NotFoundError

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

    def flat_params(self, form: Callable[[Any], str] | None = None) -> dict[str, str]:
        """The config as flat MLflow params: what its run records. `form` writes
        each value (default `param_value`)."""
        return flat_params(self, form)

    def fingerprint_params(self) -> tuple[str, ...]:
        """The keys of `flat_params` that change the result: what a rerun under
        the same run name must match (`tracking.start_run` checks them)."""
        return fingerprint_fields(self)

    def changed_params(self, logged: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """The fingerprinted params whose value in `logged` (an existing run's
        params) is not this config's, as {key: (logged, ours)}. A run logged
        before params became readable wrote Python's str() of each value
        ("('B',)" for ("B",)); that form still counts as the same setting."""
        params, earlier = self.flat_params(), self.flat_params(legacy_param_value)
        return {
            key: (logged[key], params[key])
            for key in self.fingerprint_params()
            if key in params and key in logged and logged[key] not in (params[key], earlier[key])
        }

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


def param_value(value: Any) -> str:
    """One config value as an MLflow param a person reads: None and () as "",
    a tuple of plain values comma-separated (B,C as --set takes it), anything
    nested as JSON."""
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        plain = all(isinstance(v, str | int | float) and "," not in str(v) for v in value)
        return ",".join(map(str, value)) if plain else json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def legacy_param_value(value: Any) -> str:
    """How params were written before `param_value`: Python's str()."""
    return "" if value is None else str(value)


def flat_params(config: Any, form: Callable[[Any], str] | None = None) -> dict[str, str]:
    """A config as flat string params for MLflow, each value written by `form`
    (default `param_value`)."""
    form = form or param_value
    return {key: form(value) for key, value in dataclasses.asdict(config).items()}


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


# ---------------------------------------------------------------------------
# Config files: --config FILE


def read_config_file(path: str) -> dict[str, Any]:
    """The fields a config file sets: JSON when it ends in .json (what a run
    logs as config.json), else YAML (what --print-config prints)."""
    import yaml  # only a command given --config pays for it

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFoundError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML: {problem}{at}") from None
    if values is None:  # an empty file sets nothing
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} holds a {type(values).__name__}; a config file is a mapping of field "
            "names to values"
        )
    return values


def _optional(annotation: Any) -> tuple[Any, bool]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def file_value(value: Any, annotation: Any, field_name: str) -> Any:
    """A value read from a JSON or YAML file as the field's type. A string for
    a field of another type is read as --set reads it ("1e-3", "B,C", "true")."""
    hint, optional = _optional(annotation)
    if value is None:
        require(optional, field_name, f"a {getattr(hint, '__name__', 'value')}, not null", value)
        return None
    if hint is Any:
        return tuple(value) if isinstance(value, list) else value
    if isinstance(value, str) and hint is not str:
        return parse_value(value, annotation, field_name)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if isinstance(value, dict) and len(args) == 2 and args[1] is Ellipsis:
            value = list(value.items())  # a grid written as a mapping: {width: [0.5, 1]}
        require(isinstance(value, list | tuple), field_name, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            # Inside a list a string stays one: configs parse their own entries ("256:512").
            return tuple(
                v if isinstance(v, str) else file_value(v, args[0], field_name) for v in value
            )
        require(len(value) == len(args), field_name, f"a list of {len(args)}", value)
        return tuple(file_value(v, a, field_name) for v, a in zip(value, args, strict=True))
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(hint)
    if kinds is None:
        return value
    wrong_bool = isinstance(value, bool) and hint is not bool
    if not isinstance(value, kinds) or wrong_bool:
        quote = " (quote it in YAML)" if hint is str else ""
        raise ConfigError(f"{field_name} takes a {hint.__name__}{quote}; got {value!r}")
    # As read: an int stays an int in a float field, as a recipe may have it, so
    # that a printed config logs the same params (2, not 2.0) and is the same run.
    return value


def apply_values(config: Any, values: Mapping[str, Any], source: str, cls: Any = None) -> Any:
    """`config` with the fields `values` sets (read from the file `source`);
    with config None, `cls`'s defaults with them. A field that is itself a
    config (a sweep's `train`) is set field by field from a mapping. Errors
    name `source` and the field."""
    cls = cls or type(config)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown field {key!r}; fields are {', '.join(sorted(fields))}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            inner = getattr(config, key) if config is not None else None
            changes[key] = apply_values(inner, value, f"{source}: {key}", hint)
            continue
        try:
            changes[key] = file_value(value, hint, key)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return dataclasses.replace(config, **changes) if config is not None else cls(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_text(config: Any, form: str = "yaml") -> str:
    """The whole config as a config file: YAML in field order, or the JSON a run logs."""
    if form == "json":
        return config.to_json()
    import yaml

    class Dumper(yaml.SafeDumper):
        """Fields one a line, each list on its field's line: [B, C]."""

    Dumper.add_representer(
        list, lambda dumper, value: dumper.represent_sequence(SEQUENCE_TAG, value, flow_style=True)
    )
    plain = json.loads(json.dumps(config.to_dict()))  # tuples as lists
    return yaml.dump(plain, Dumper=Dumper, sort_keys=False, width=100)


SEQUENCE_TAG = "tag:yaml.org,2002:seq"


__all__ = [
    "FINGERPRINT",
    "ConfigError",
    "Serialised",
    "TrackingSection",
    "apply_overrides",
    "apply_values",
    "as_tuple",
    "config_text",
    "fingerprint_fields",
    "flat_params",
    "option",
    "parse_train_scale",
    "param_value",
    "parse_value",
    "read_config_file",
    "require",
    "settings_digest",
    "split_values",
    "train_scale_label",
]
