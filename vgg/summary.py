"""Model size and cost figures: parameters and multiply-adds, from the layers."""

from __future__ import annotations

import torch
from torch import nn

from vgg.configs import CONFIGS
from vgg.model import VGG, build_vgg


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: VGG, crop_size: int | None = None) -> int:
    """Multiply-adds of one forward pass on a crop_size x crop_size image,
    counted from the conv and linear layers (pooling, ReLU and LRN are not
    multiply-adds). Config D at 224: 15.47 G, as PAPER.md section 5 says."""
    crop_size = crop_size or model.crop_size
    side = crop_size
    macs = 0
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            macs += side * side * layer.out_channels * layer.in_channels * kh * kw
        elif isinstance(layer, nn.MaxPool2d):
            side //= 2
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            macs += layer.in_features * layer.out_features
    return macs


def config_table(crop_size: int = 224, num_classes: int = 1000) -> str:
    """The paper's Table 1/2 figures for every config, as a printable table."""
    rows = [("config", "weight layers", "parameters", f"GMACs at {crop_size}")]
    for config in CONFIGS:
        # Weights are never used here: on the meta device nothing is allocated
        # or initialised (a full net's build is otherwise about half a second).
        with torch.device("meta"):
            model = VGG(config, num_classes=num_classes, crop_size=crop_size)
        rows.append(
            (
                config,
                str(model.weight_layers),
                f"{count_parameters(model):,}",
                f"{count_macs(model, crop_size) / 1e9:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["build_vgg", "config_table", "count_macs", "count_parameters"]
