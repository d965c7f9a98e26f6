"""The VGG paper in plain PyTorch: networks, initialisation, dense evaluation and
torchvision interop. No Ray and no MLflow here, so everything runs and is
tested in a plain Python process.

The names below load on first use: `vgg.configs` (the Table 1 data) is
importable without torch, which keeps configs and command-line help fast.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "configs": ["ALIASES", "CONFIGS"],
        "model": ["VGG", "build_vgg", "init_weights", "vgg11", "vgg13", "vgg16", "vgg19"],
        "dense": ["DenseVGG", "to_fully_convolutional", "whole_window_region"],
        "interop": ["load_torchvision_state_dict", "to_torchvision_state_dict"],
        "summary": ["config_table", "count_macs", "count_parameters"],
        "transfer": ["init_from_shallower"],
    },
)
