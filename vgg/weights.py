"""A trained net as two files that load without running anyone's code:
`net.json` (the `build_vgg` arguments) and `model.safetensors` (the weights).
Training checkpoints and the models logged to MLflow both keep their weights
this way, so a net can be rebuilt from either with `load_net`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vgg.model import VGG, build_vgg

WEIGHTS_FILE = "model.safetensors"
ARGUMENTS_FILE = "net.json"


def save_net(net: VGG, folder: str | Path) -> Path:
    """Write `net` into `folder` (created if missing); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / WEIGHTS_FILE)
    (folder / ARGUMENTS_FILE).write_text(json.dumps(net.arguments(), indent=1))
    return folder


def save_weights(net: torch.nn.Module, path: str | Path) -> None:
    state_dict = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state_dict, str(path))


def load_net(folder: str | Path) -> VGG:
    """The net `save_net` wrote, on the CPU, in eval mode. Nothing is
    unpickled: the arguments are JSON and the weights safetensors."""
    folder = Path(folder)
    try:
        arguments = json.loads((folder / ARGUMENTS_FILE).read_text())
        # The random initialisation is overwritten at once; skip its cost.
        with torch.device("meta"):
            net = build_vgg(**arguments)
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), assign=True)
    except (OSError, TypeError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"{folder} holds no net that save_net wrote: {error}") from error
    return net.eval()
