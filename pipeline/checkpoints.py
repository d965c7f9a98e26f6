"""The training checkpoint format, in one place.

A checkpoint is a folder (a Ray Train `Checkpoint`, so it may live on any
`pyarrow.fs` storage):

    model.safetensors    the network's weights (safetensors: no code runs on load)
    training_state.pt    optimiser, schedule, epoch, seeds; tensors and plain
                         Python values only, loaded with torch.load(weights_only=True)
    config.json          the TrainConfig it was trained with, and the class count

Stages that need a trained network (deeper nets from net A, S = 384 from 256,
evaluation) come here with a checkpoint path or an MLflow run id.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.errors import ConfigError, NotFoundError
from pipeline.train.config import TrainConfig
from vgg import VGG, build_vgg
from vgg.weights import WEIGHTS_FILE as MODEL_FILE
from vgg.weights import save_weights

STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.json"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def save(
    folder: str | Path,
    model: VGG,
    config: TrainConfig,
    num_classes: int,
    training_state: dict[str, Any],
) -> None:
    folder = Path(folder)
    save_weights(model, folder / MODEL_FILE)
    torch.save(training_state, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(
        json.dumps({"train": config.to_dict(), "num_classes": num_classes}, indent=1)
    )


@dataclass
class LoadedCheckpoint:
    model: VGG
    config: TrainConfig
    num_classes: int
    path: str


def _local_copy(path: str):
    """A context manager giving a local folder for a checkpoint anywhere."""
    from ray.train import Checkpoint

    return Checkpoint(path).as_directory()


def uri_of(checkpoint) -> str:
    """A Ray Train checkpoint's location as one string `load` takes back. Ray
    keeps a checkpoint in object storage as a path without its scheme
    (`bucket/work/checkpoints/...`) beside a filesystem object; alone, that
    path reads as a local one (and `Checkpoint(path)` refuses it)."""
    import pyarrow.fs as pafs

    filesystem = checkpoint.filesystem
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    return f"{filesystem.type_name}://{checkpoint.path}"


def read_config(path: str) -> tuple[TrainConfig, int]:
    with _local_copy(path) as folder:
        raw = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return TrainConfig.from_dict(raw["train"]), int(raw["num_classes"])


def build_model(config: TrainConfig, num_classes: int) -> VGG:
    return build_vgg(
        config.config,
        num_classes=num_classes,
        width=config.width,
        crop_size=config.crop_size,
        dropout=config.dropout,
        init=config.init,
        init_std=config.init_std,
    )


def load(path: str) -> LoadedCheckpoint:
    """The network of a checkpoint folder (local path or URI), on the CPU."""
    with _local_copy(path) as folder:
        folder = Path(folder)
        if not (folder / MODEL_FILE).exists():
            raise NotFoundError(f"{path} is not a vggpipe checkpoint (no {MODEL_FILE})")
        raw = json.loads((folder / CONFIG_FILE).read_text())
        config, num_classes = TrainConfig.from_dict(raw["train"]), int(raw["num_classes"])
        model = build_model(config, num_classes)
        model.load_state_dict(load_file(str(folder / MODEL_FILE)))
    return LoadedCheckpoint(model, config, num_classes, path)


def load_training_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, weights_only=True)


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / MODEL_FILE))


def resolve(reference: str, tracking_uri: str | None = None, which: str = "best") -> str:
    """A checkpoint path from a path/URI or an MLflow run id (its best or final
    checkpoint, as the training stage tagged it)."""
    from pipeline import tracking

    if "://" in reference or os.path.exists(reference):
        return reference
    if RUN_ID.match(reference):
        tag = tracking.BEST_CHECKPOINT_TAG if which == "best" else tracking.FINAL_CHECKPOINT_TAG
        tags = tracking.get_run(reference, tracking_uri).data.tags
        if tag not in tags:
            raise ConfigError(f"MLflow run {reference} has no {which} checkpoint (tag {tag})")
        return tags[tag]
    raise NotFoundError(f"{reference!r} is neither a checkpoint path nor an MLflow run id")
