"""torchvision weight interop, so users can evaluate torchvision's published VGG
weights with the paper's protocols (and export ours to torchvision).

`VGG` keeps torchvision's module indices for configs A, B, D and E, so the
conversion is a validated load by name; A-LRN and C have no torchvision twin.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vgg.configs import ALIASES
from vgg.model import VGG

TORCHVISION_CONFIGS = {config: name for name, config in ALIASES.items()}


def _check_torchvision_twin(model: VGG) -> None:
    if model.config not in TORCHVISION_CONFIGS:
        raise ValueError(
            f"torchvision has no VGG for config {model.config}; "
            f"interop covers {', '.join(f'{c} ({n})' for c, n in TORCHVISION_CONFIGS.items())}"
        )


def load_torchvision_state_dict(model: VGG, state_dict: Mapping[str, torch.Tensor]) -> VGG:
    """Load a torchvision vgg11/13/16/19 state dict (plain or batch-norm-free) into
    `model` in place and return it. The model's crop_size must be 224: torchvision's
    FC1 takes the 7x7 map its adaptive pool produces."""
    _check_torchvision_twin(model)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"not a torchvision {TORCHVISION_CONFIGS[model.config]} state dict for config "
            f"{model.config}: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for name, tensor in state_dict.items():
        if tensor.shape != ours[name].shape:
            raise ValueError(
                f"{name}: torchvision tensor {tuple(tensor.shape)} does not fit this model's "
                f"{tuple(ours[name].shape)} (width {model.width}, "
                f"{model.num_classes} classes, crop_size {model.crop_size})"
            )
    model.load_state_dict(state_dict)
    return model


def to_torchvision_state_dict(model: VGG) -> dict[str, torch.Tensor]:
    """`model`'s weights under torchvision's names (a copy, on the CPU)."""
    _check_torchvision_twin(model)
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
