"""The VGG networks of the paper's Table 1 as one data table and one module.

The module keeps torchvision's layout (`features` then `classifier`, the same
Sequential indices for configs A, B, D and E), so torchvision's published
weights load by name and a reader who knows `torchvision.models.vgg` knows this
file. Unlike torchvision there is no adaptive pooling: the crop size fixes the
input of FC1, and other input sizes are the dense network's job
(`vgg.dense.to_fully_convolutional`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vgg.configs import CONFIGS, FC_WIDTH, INIT_SCHEMES, resolve_config


@dataclass(frozen=True)
class ConvSite:
    """Where a conv sits: `stage` and `position` count from 1 as the paper's
    table reads; `index` is its position in `VGG.features`."""

    stage: int
    position: int
    index: int


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG(nn.Module):
    """One VGG network. Build it with `build_vgg`, which validates arguments."""

    def __init__(
        self,
        config: str,
        *,
        num_classes: int = 1000,
        width: float = 1.0,
        crop_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = resolve_config(config)
        self.num_classes = num_classes
        self.width = width
        self.crop_size = crop_size
        self.dropout = dropout

        layers: list[nn.Module] = []
        sites: list[ConvSite] = []
        in_channels = 3
        for stage, convs in enumerate(CONFIGS[self.config], start=1):
            for position, spec in enumerate(convs, start=1):
                kernel, out = (1, spec[1]) if isinstance(spec, tuple) else (3, spec)
                out = scaled(out, width)
                sites.append(ConvSite(stage, position, len(layers)))
                layers += [
                    nn.Conv2d(in_channels, out, kernel_size=kernel, padding=kernel // 2),
                    nn.ReLU(inplace=True),
                ]
                if self.config == "A-LRN" and stage == 1:
                    # torch divides alpha by `size` (Caffe's convention); AlexNet's
                    # formula, which the paper cites, does not, hence alpha * size.
                    layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0))
                in_channels = out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.conv_sites: tuple[ConvSite, ...] = tuple(sites)

        fc_width = scaled(FC_WIDTH, width)
        cells = (crop_size // 32) ** 2
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * cells, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def conv(self, stage: int, position: int) -> nn.Conv2d:
        """The conv at (stage, position), both counted from 1."""
        for site in self.conv_sites:
            if (site.stage, site.position) == (stage, position):
                return self.features[site.index]
        raise KeyError(f"config {self.config} has no conv at stage {stage}, position {position}")

    def arguments(self) -> dict:
        """The `build_vgg` arguments that rebuild this net's shape (not its
        weights): with them and a state dict the net is whole again."""
        return {
            "config": self.config,
            "num_classes": self.num_classes,
            "width": self.width,
            "crop_size": self.crop_size,
            "dropout": self.dropout,
        }

    @property
    def weight_layers(self) -> int:
        return len(self.conv_sites) + 3

    def extra_repr(self) -> str:
        return (
            f"config={self.config}, num_classes={self.num_classes}, width={self.width}, "
            f"crop_size={self.crop_size}"
        )


def init_weights(model: nn.Module, scheme: str = "gaussian", std: float = 0.01) -> None:
    """Initialise every conv and linear layer in place; biases start at zero.

    "gaussian": N(0, std^2). The paper trains net A this way (its text says
    variance 1e-2; the released Caffe models and torchvision's linear layers use
    std 0.01, this project's default) and the deeper nets the same way apart from
    the layers copied from net A (`init_from_shallower`).
    "xavier": Glorot uniform, which the authors found after submission trains the
    deep nets without pre-training net A.
    "kaiming": not in the paper; torchvision's VGG init (He normal, fan-out, for
    the convs; N(0, 0.01) for the FC layers). He et al. (2015) derived it for
    ReLU nets, and it gets narrow nets off the loss plateau in a few epochs,
    which the CPU demo needs.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}")
    if std <= 0:
        raise ValueError(f"init_std must be > 0; got {std!r}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if scheme == "gaussian" or (scheme == "kaiming" and isinstance(module, nn.Linear)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


def build_vgg(
    config: str,
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    crop_size: int = 224,
    dropout: float = 0.5,
    init: str = "gaussian",
    init_std: float = 0.01,
) -> VGG:
    """Build config `config` ("A", "A-LRN", "B", "C", "D", "E" or vgg11/13/16/19).

    `width` scales every channel count, conv and FC alike (tests use narrow
    nets); `crop_size` is the training crop's side, a multiple of 32, and fixes
    FC1's input size.
    """
    config = resolve_config(config)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0 (1.0 is the paper's); got {width!r}")
    if not isinstance(crop_size, int) or crop_size < 32 or crop_size % 32:
        raise ValueError(
            f"crop_size must be a positive multiple of 32 (224 is the paper's); got {crop_size!r}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    model = VGG(config, num_classes=num_classes, width=width, crop_size=crop_size, dropout=dropout)
    init_weights(model, init, init_std)
    return model


def vgg11(**kwargs) -> VGG:
    """Config A (torchvision's vgg11)."""
    return build_vgg("A", **kwargs)


def vgg13(**kwargs) -> VGG:
    """Config B (torchvision's vgg13)."""
    return build_vgg("B", **kwargs)


def vgg16(**kwargs) -> VGG:
    """Config D (torchvision's vgg16)."""
    return build_vgg("D", **kwargs)


def vgg19(**kwargs) -> VGG:
    """Config E (torchvision's vgg19)."""
    return build_vgg("E", **kwargs)
