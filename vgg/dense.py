"""The dense-evaluation network of the paper's section 3.2."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vgg.model import VGG


class DenseVGG(nn.Module):
    """VGG with its FC layers as convs: FC1 a (crop_size/32)-square conv, FC2 and
    FC3 1x1 convs. Any input of at least crop_size gives a class-score map of
    shape (N, num_classes, H/32 - crop_size/32 + 1, W/32 - crop_size/32 + 1);
    on a crop_size input that map is 1x1 and equals `VGG`'s logits."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def whole_window_region(
    height: int, width: int, crop_size: int, stride: int = 32
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of a `height` x `width` image
    that the dense net's score windows tile exactly, centred: `crop_size` plus
    whole strides each way, the leftover border split evenly between both sides
    (as the centre crop splits it). At the paper's test scales (Q a multiple of
    32 with 224 crops) that is the whole image; at a Q between, the windows
    neither start at the top left (floor pooling) nor hang off the image (ceil)."""
    region_h = crop_size + (height - crop_size) // stride * stride
    region_w = crop_size + (width - crop_size) // stride * stride
    return (height - region_h) // 2, (width - region_w) // 2, region_h, region_w


def _linear_as_conv(linear: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size=kernel)
    with torch.no_grad():
        # torch.flatten of NCHW orders FC1's inputs channel-major, then rows,
        # then columns: exactly a conv weight's (out, C, kH, kW) layout.
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kernel, kernel))
        conv.bias.copy_(linear.bias)
    return conv


def to_fully_convolutional(model: VGG, *, ceil_mode: bool = True) -> DenseVGG:
    """A dense-evaluation copy of `model` with the same weights (the model itself
    is left as it was). The copy is in eval mode, as evaluation wants.

    `ceil_mode`: how its max-pools round an odd size. The paper's Caffe nets
    round up, so at a Q that is not a multiple of 32 the bottom and right
    border still reach a score window; PyTorch's default rounds down and drops
    them. At the 224 training crops (a multiple of 32) the two agree, so any
    weights, torchvision's (trained with floor) included, load either way; only
    dense evaluation at other Q differs. True (the default) is the paper's."""
    fc1, fc2, fc3 = (model.classifier[i] for i in (0, 3, 6))
    kernel = model.crop_size // 32
    in_channels = fc1.in_features // (kernel * kernel)
    classifier = nn.Sequential(
        _linear_as_conv(fc1, in_channels, kernel),
        nn.ReLU(inplace=True),
        copy.deepcopy(model.classifier[2]),
        _linear_as_conv(fc2, fc2.in_features, 1),
        nn.ReLU(inplace=True),
        copy.deepcopy(model.classifier[5]),
        _linear_as_conv(fc3, fc3.in_features, 1),
    )
    features = copy.deepcopy(model.features)
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = ceil_mode
    dense = DenseVGG(features, classifier)
    dense.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
    return dense.eval()
