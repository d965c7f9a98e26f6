"""The nets under evaluation: any MODEL reference the stage takes, as an
architecture, its weights and what the table needs to know about it.

A reference is a torchvision state dict file (.pth, .pt), an MLflow run id (its
best checkpoint), a model a run logged ("runs:/<run id>/best_model"), a
checkpoint folder or URI, or a registered model ("models:/name/version",
"models:/name@alias", "name/version"). Weights stay on
the CPU here; they cross to the workers through the object store.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ConfigError, train_scale_label
from pipeline.errors import NotFoundError

if TYPE_CHECKING:
    import torch

    from vgg.evaluation import Architecture
    from vgg.transforms import PixelStatistics

# torchvision's weights expect inputs divided by these (0-255 units) after the
# mean subtraction; its models were trained with RandomResizedCrop, which has
# no S, and its own evaluation resizes to 256, so that is taken as S.
TORCHVISION_STD_RGB = (58.395, 57.12, 57.375)
TORCHVISION_ASSUMED_S = 256
STATE_DICT_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True)
class EvaluatedModel:
    """One net under evaluation; its weights travel separately (object store)."""

    label: str  # its name in the table
    reference: str  # as the user gave it
    source: str  # "run", "registered", "checkpoint" or "torchvision"
    architecture: Architecture
    train_scale: tuple[int, int] | None  # (Smin, Smax); None: not known (torchvision)
    mean_rgb: tuple[float, float, float]  # subtracted from 0-255 pixels
    std_rgb: tuple[float, float, float] | None  # then divided by (torchvision's weights)
    run_id: str | None  # MLflow run its results are logged on (None: the evaluation run)
    data: str | None  # the prepared dataset it was trained on, when known

    @property
    def scale_text(self) -> str:
        """Training S as the paper's tables write it: 256, or [256;512] when jittered."""
        return "-" if self.train_scale is None else train_scale_label(self.train_scale)


LoadedModel = tuple[EvaluatedModel, "dict[str, torch.Tensor]"]


def _statistics(*datasets: str | None) -> PixelStatistics:
    """The first readable dataset's pixel statistics."""
    from pipeline.ingest import pixel_statistics

    errors = []
    for dataset in datasets:
        if not dataset:
            continue
        try:
            return pixel_statistics(dataset)
        except (OSError, ValueError) as exc:
            errors.append(f"{dataset}: {exc}")
    raise ConfigError("no pixel statistics for the mean RGB: " + "; ".join(errors))


def with_mean_rgb(model: EvaluatedModel, data: str) -> EvaluatedModel:
    """A net trained here subtracts the mean RGB of its training data (else of
    the evaluated `data`); torchvision's weights keep ImageNet's."""
    if model.std_rgb is not None:
        return model
    stats = _statistics(model.data, data)
    return dataclasses.replace(model, mean_rgb=tuple(stats.mean_rgb))


def distinct_labels(models: list[EvaluatedModel]) -> list[EvaluatedModel]:
    """The nets with a "#2", "#3" ... on repeated labels, so each row names one net."""
    seen: dict[str, int] = {}
    distinct = []
    for model in models:
        count = seen.get(model.label, 0)
        seen[model.label] = count + 1
        if count:
            model = dataclasses.replace(model, label=f"{model.label}#{count + 1}")
        distinct.append(model)
    return distinct


def _run_for_checkpoint(path: str, config, uri: str) -> str | None:
    """The training run that wrote checkpoint `path`: the run with the config's
    name whose best or final checkpoint sits in the same Ray Train run folder."""
    from pipeline import tracking

    run = tracking.find_run(config.name, config.experiment, uri, stage="train")
    if run is None:
        return None
    folder = os.path.dirname(os.path.normpath(path))
    for tag in (tracking.BEST_CHECKPOINT_TAG, tracking.FINAL_CHECKPOINT_TAG):
        tagged = run.data.tags.get(tag)
        if tagged and os.path.dirname(os.path.normpath(tagged)) == folder:
            return run.info.run_id
    return None


def _from_checkpoint(
    reference: str, path: str, source: str, run_id: str | None, label: str | None, uri: str
) -> LoadedModel:
    from pipeline import checkpoints
    from vgg.evaluation import Architecture

    loaded = checkpoints.load(path)
    config = loaded.config
    if run_id is None:
        run_id = _run_for_checkpoint(path, config, uri)
    architecture = Architecture(config.config, config.width, loaded.num_classes, config.crop_size)
    model = EvaluatedModel(
        label=label or config.name,
        reference=reference,
        source=source,
        architecture=architecture,
        train_scale=(config.scale_min, config.scale_max),
        mean_rgb=(0.0, 0.0, 0.0),  # set once the evaluated data is known (with_mean_rgb)
        std_rgb=None,
        run_id=run_id,
        data=config.data or None,
    )
    return model, loaded.model.state_dict()


def _from_torchvision_file(reference: str) -> LoadedModel:
    import torch

    from vgg.evaluation import architecture_of, unallocated_vgg
    from vgg.interop import TORCHVISION_CONFIGS, load_torchvision_state_dict
    from vgg.transforms import PixelStatistics

    try:
        with warnings.catch_warnings():
            # A file of another pickle protocol draws a warning before it is refused.
            warnings.simplefilter("ignore", UserWarning)
            state_dict = torch.load(reference, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        # Its message advises weights_only=False, which would run the file's code.
        raise ConfigError(
            f"{reference} is not a state dict that loads without running code "
            f"(torch.load with weights_only=True: {type(exc).__name__})"
        ) from exc
    if not isinstance(state_dict, dict):
        raise ConfigError(f"{reference} holds a {type(state_dict).__name__}, not a state dict")
    try:  # `vgg` says what does not fit in a ValueError: the user's file is at fault
        architecture = architecture_of(state_dict)
        if architecture.config in TORCHVISION_CONFIGS:
            # torchvision's own weights go through the interop, which checks them by
            # name and shape; the net is allocated, not initialised (to_empty).
            model = unallocated_vgg(architecture).to_empty(device="cpu")
            model = load_torchvision_state_dict(model, state_dict)
            state_dict = model.state_dict()
    except ValueError as exc:
        raise ConfigError(f"{reference}: {exc}") from exc
    model = EvaluatedModel(
        label=Path(reference).stem,
        reference=reference,
        source="torchvision",
        architecture=architecture,
        train_scale=None,
        mean_rgb=PixelStatistics.imagenet().mean_rgb,
        std_rgb=TORCHVISION_STD_RGB,
        run_id=None,
        data=None,
    )
    return model, state_dict


def _from_logged_model(
    reference: str, model_uri: str, run_id: str | None, label: str, source: str, uri: str
) -> LoadedModel:
    """A model `tracking.Run.log_model` logged, by its MLflow URI; what the
    table needs from the run that logged it (`run_id`), when there is one."""
    from pipeline import tracking
    from vgg.evaluation import architecture_of

    net = tracking.load_logged_net(model_uri, uri)
    state_dict = net.state_dict()
    params = tracking.get_run(run_id, uri).data.params if run_id else {}
    train_scale = None
    if params.get("scale_min") and params.get("scale_max"):
        train_scale = (int(params["scale_min"]), int(params["scale_max"]))
    model = EvaluatedModel(
        label=label,
        reference=reference,
        source=source,
        architecture=architecture_of(state_dict),
        train_scale=train_scale,
        mean_rgb=(0.0, 0.0, 0.0),
        std_rgb=None,
        run_id=run_id,
        data=params.get("data") or None,
    )
    return model, state_dict


def _run_label(run) -> str:
    """A net's name in the table: its run's name, else the run id's start."""
    return run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def load_model(reference: str, uri: str) -> LoadedModel:
    """A net from any reference the stage takes (see the module docstring),
    and its weights on the CPU."""
    from pipeline import checkpoints, tracking

    exists = os.path.exists(reference)
    if exists and os.path.isfile(reference) and reference.endswith(STATE_DICT_SUFFIXES):
        return _from_torchvision_file(reference)
    if checkpoints.RUN_ID.match(reference) and not exists:
        run = tracking.get_run_or_none(reference, uri)
        if run is None:
            raise NotFoundError(f"no MLflow run {reference} in {uri}")
        path = checkpoints.resolve(reference, uri)
        return _from_checkpoint(reference, path, "run", reference, _run_label(run), uri)
    if exists or "://" in reference:
        # Ray's Checkpoint takes absolute paths or URIs only.
        path = os.path.abspath(reference) if exists else reference
        return _from_checkpoint(reference, path, "checkpoint", None, None, uri)
    if reference.startswith("runs:/"):
        run_id, _, name = reference.removeprefix("runs:/").partition("/")
        if not name:
            raise ConfigError(f"{reference!r} names no model: runs:/<run id>/best_model")
        run = tracking.get_run_or_none(run_id, uri) if checkpoints.RUN_ID.match(run_id) else None
        if run is None:
            raise NotFoundError(f"{reference!r}: no MLflow run {run_id!r} in {uri}")
        return _from_logged_model(reference, reference, run_id, _run_label(run), "run", uri)
    version = tracking.registered_model_version(reference, uri)
    if version is not None:
        return _from_logged_model(
            reference,
            f"models:/{version.name}/{version.version}",
            version.run_id or None,
            f"{version.name}/v{version.version}",
            "registered",
            uri,
        )
    raise NotFoundError(
        f"{reference!r} is not a state dict file, an MLflow run id, a logged model "
        f"(runs:/<run id>/<name>), a checkpoint or a registered model in {uri}"
    )


__all__ = [
    "STATE_DICT_SUFFIXES",
    "TORCHVISION_ASSUMED_S",
    "TORCHVISION_STD_RGB",
    "EvaluatedModel",
    "distinct_labels",
    "load_model",
    "with_mean_rgb",
]
