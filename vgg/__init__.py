"""The VGG paper in plain PyTorch: networks, initialisation, dense evaluation and
torchvision interop. No Ray and no MLflow here, so everything runs and is
tested in a plain Python process.

The names below load on first use: `vgg.configs` (the Table 1 data) is
importable without torch, which keeps configs and command-line help fast.
"""

from importlib import import_module

_LAZY = {
    "ALIASES": "configs",
    "CONFIGS": "configs",
    "VGG": "model",
    "build_vgg": "model",
    "init_weights": "model",
    "vgg11": "model",
    "vgg13": "model",
    "vgg16": "model",
    "vgg19": "model",
    "DenseVGG": "dense",
    "to_fully_convolutional": "dense",
    "load_torchvision_state_dict": "interop",
    "to_torchvision_state_dict": "interop",
    "config_table": "summary",
    "count_macs": "summary",
    "count_parameters": "summary",
    "init_from_shallower": "transfer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"vgg.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vgg' has no attribute {name!r}")


__all__ = sorted(_LAZY)
