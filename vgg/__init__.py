"""The VGG paper in plain PyTorch: networks, initialisation, dense evaluation and
torchvision interop. No Ray and no MLflow here, so everything runs and is
tested in a plain Python process."""

from vgg.dense import DenseVGG, to_fully_convolutional
from vgg.interop import load_torchvision_state_dict, to_torchvision_state_dict
from vgg.model import (
    ALIASES,
    CONFIGS,
    VGG,
    build_vgg,
    init_weights,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
)
from vgg.summary import config_table, count_macs, count_parameters
from vgg.transfer import init_from_shallower

__all__ = [
    "ALIASES",
    "CONFIGS",
    "VGG",
    "DenseVGG",
    "build_vgg",
    "config_table",
    "count_macs",
    "count_parameters",
    "init_from_shallower",
    "init_weights",
    "load_torchvision_state_dict",
    "to_fully_convolutional",
    "to_torchvision_state_dict",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
]
