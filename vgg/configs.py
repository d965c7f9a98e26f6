"""The paper's Table 1 as data, and the names its settings go by: no torch
here, so a config can be named and checked (`resolve_config`) without loading
torch."""

from __future__ import annotations

from typing import Literal

# One entry per conv stage (each stage ends in a 2x2 max-pool). An int is a 3x3
# conv with that many output channels; ("1x1", n) is config C's conv1-n.
ConvSpec = int | tuple[Literal["1x1"], int]

CONFIGS: dict[str, tuple[tuple[ConvSpec, ...], ...]] = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "A-LRN": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "C": (
        (64, 64),
        (128, 128),
        (256, 256, ("1x1", 256)),
        (512, 512, ("1x1", 512)),
        (512, 512, ("1x1", 512)),
    ),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}

# torchvision's names for the configs it ships (it has no A-LRN and no C).
ALIASES: dict[str, str] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

FC_WIDTH = 4096
INIT_SCHEMES = ("gaussian", "xavier", "kaiming")


def resolve_config(config: str) -> str:
    """The canonical config name ("A".."E", "A-LRN") for a name or an alias."""
    name = ALIASES.get(config.lower(), config.upper()) if isinstance(config, str) else config
    if name not in CONFIGS:
        allowed = ", ".join([*CONFIGS, *ALIASES])
        raise ValueError(f"config must be one of {allowed}; got {config!r}")
    return name


# Dense evaluation's ways to turn a class-score map into one vector
# (vgg.evaluation.spatial_average), named here so configs check them without torch.
SCORE_POOLING = ("mean", "sum")
# What of a rescaled test image dense evaluation sees (vgg.dense.whole_window_region)
DENSE_REGIONS = ("centred", "whole")

__all__ = [
    "ALIASES",
    "CONFIGS",
    "FC_WIDTH",
    "INIT_SCHEMES",
    "SCORE_POOLING",
    "DENSE_REGIONS",
    "ConvSpec",
    "resolve_config",
]
