"""The paper's test protocols (PAPER.md section 3) as scoring on tensors.

Every protocol ends in softmax class posteriors, one (N, K) row per image, and
every combination the paper makes is a plain average of posteriors: the
flipped image in dense evaluation, the 2 * grid * grid crops of multi-crop
evaluation, dense + multi-crop, the test scales Q of multi-scale evaluation and
the nets of an ensemble. Averages with equal weights commute, so the order in
which a caller combines them does not matter; `pipeline.evaluate` averages
views, then scales, then nets, so each net of an ensemble weighs the same
whatever its number of scales.

Inputs here are float NCHW batches already normalised (`vgg.transforms.to_model_input`);
image decoding and the crop geometry live in `vgg.transforms`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vgg.configs import CONFIGS, SCORE_POOLING
from vgg.model import VGG

# Fixed S: the paper's multi-scale test uses Q in {S - 32, S, S + 32}.
PAPER_SCALE_STEP = 32


# ---------------------------------------------------------------------------
# Test scales Q from the training scale S


def single_test_scale(scale_min: int, scale_max: int) -> int:
    """Q of the single-scale test: S for a fixed S (scale_min == scale_max),
    the middle 0.5 (Smin + Smax) for scale jittering."""
    return (scale_min + scale_max) // 2


def multi_test_scales(
    scale_min: int,
    scale_max: int,
    *,
    step: int = PAPER_SCALE_STEP,
    crop_size: int | None = None,
) -> tuple[int, ...]:
    """Q of the multi-scale test: {S - step, S, S + step} for a fixed S,
    {Smin, 0.5 (Smin + Smax), Smax} for a jittered one, in increasing order.

    With `crop_size`, a Q below it is raised to it (and duplicates dropped):
    neither dense nor multi-crop evaluation has a whole window below the crop
    size. The paper never meets this (S - 32 = 224 for S = 256); a net trained
    at S close to its crop size, like the demo nets (S 36, crop 32), does.
    """
    if scale_min == scale_max:
        scales = (scale_min - step, scale_min, scale_min + step)
    else:
        scales = (scale_min, single_test_scale(scale_min, scale_max), scale_max)
    if crop_size is not None:
        scales = tuple(max(q, crop_size) for q in scales)
    return tuple(sorted(set(scales)))


# ---------------------------------------------------------------------------
# Posteriors


def softmax_posteriors(logits: torch.Tensor) -> torch.Tensor:
    """Class posteriors of (N, K) logits, in float32 whatever the forward's dtype."""
    return torch.softmax(logits.float(), dim=1)


def spatial_average(score_maps: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(N, K, h, w) class-score maps to (N, K). The paper says "spatially
    averaged (sum-pooled)". "mean" (the default) keeps the scores at one
    window's scale, so a crop_size image gives exactly the single-crop logits
    and the softmax is no sharper for a larger image; "sum" is the literal
    reading, whose softmax sharpens with the number of windows."""
    if pooling not in SCORE_POOLING:
        raise ValueError(f"pooling must be one of {', '.join(SCORE_POOLING)}; got {pooling!r}")
    scores = score_maps.float()
    return scores.sum(dim=(2, 3)) if pooling == "sum" else scores.mean(dim=(2, 3))


def dense_posteriors(
    dense: nn.Module, images: torch.Tensor, *, flip: bool = True, pooling: str = "mean"
) -> torch.Tensor:
    """Dense evaluation of a batch of equal-size whole images (N, 3, H, W):
    the fully convolutional net's score map, pooled (`spatial_average`), to
    softmax posteriors; with `flip`, the same for the mirrored images, and the
    two posteriors averaged. Both orientations go through one forward pass."""
    count = len(images)
    views = torch.cat([images, images.flip(-1)]) if flip else images
    posteriors = softmax_posteriors(spatial_average(dense(views), pooling))
    return (posteriors[:count] + posteriors[count:]) / 2 if flip else posteriors


def batched(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """`forward` over `inputs` in chunks of at most `batch_size`, concatenated:
    bounds the activations' memory for the 50 crops per image of multi-crop."""
    return torch.cat([forward(chunk) for chunk in inputs.split(batch_size)])


def crop_posteriors(
    model: nn.Module, crops: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Posteriors of images seen as several crops each: `crops` (N, V, 3, c, c),
    V views per image (1 for the centre crop, 2 * grid * grid for multi-crop),
    gives (N, K), the mean over an image's views of their softmax posteriors."""
    count, views = crops.shape[:2]
    flat = crops.flatten(0, 1)
    logits = batched(model, flat, batch_size or len(flat))
    return softmax_posteriors(logits).view(count, views, -1).mean(dim=1)


def average_posteriors(posteriors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The equal-weight mean of several (N, K) posteriors of the same images:
    dense + multi-crop, the scales of a multi-scale test, the nets of an ensemble."""
    if not posteriors:
        raise ValueError("no posteriors to average")
    return torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in posteriors]).mean(dim=0)


def top_k_errors(
    posteriors: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """How many images have their label outside the k most probable classes,
    per k (a k above the class count counts as the class count: no error)."""
    labels = torch.as_tensor(labels, device=posteriors.device)
    largest = min(max(ks), posteriors.shape[1])
    top = posteriors.topk(largest, dim=1).indices
    hits = top == labels[:, None]
    return {k: int((~hits[:, : min(k, largest)].any(dim=1)).sum()) for k in ks}


# ---------------------------------------------------------------------------
# Bucketing: dense evaluation batches images of equal rescaled size


@dataclass
class SizeBucket:
    """Images of one (height, width), with the keys that identify them."""

    size: tuple[int, int]
    keys: list[Hashable] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def stacked(self) -> np.ndarray:
        return np.stack(self.images)


class SizeBuckets:
    """Groups whole images (HWC arrays) by size, so dense evaluation runs one
    forward pass per group instead of one per image. A bucket is handed out as
    soon as it holds `batch_size` images; `drain` hands out the rest.

    Images rescaled to the same Q are mostly few sizes (ImageNet's are mostly
    4:3 or 3:4 photos, so at Q = 256 mostly 256x341 or 341x256), so most
    forward passes are full. Padding to a common size instead would change the
    scores near the border: every pixel reaches the pooled map through the
    3x3 convs."""

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        self._open: dict[tuple[int, int], SizeBucket] = {}

    def add(self, key: Hashable, image: np.ndarray) -> list[SizeBucket]:
        size = (int(image.shape[0]), int(image.shape[1]))
        bucket = self._open.setdefault(size, SizeBucket(size))
        bucket.keys.append(key)
        bucket.images.append(image)
        if len(bucket.keys) < self.batch_size:
            return []
        del self._open[size]
        return [bucket]

    def drain(self) -> list[SizeBucket]:
        buckets, self._open = list(self._open.values()), {}
        return buckets

    def __len__(self) -> int:
        return sum(len(bucket.keys) for bucket in self._open.values())


def bucketed(
    items: Iterator[tuple[Hashable, np.ndarray]] | Sequence[tuple[Hashable, np.ndarray]],
    batch_size: int,
) -> Iterator[SizeBucket]:
    """Every (key, image) of `items` once, in buckets of equal size."""
    buckets = SizeBuckets(batch_size)
    for key, image in items:
        yield from buckets.add(key, image)
    yield from buckets.drain()


# ---------------------------------------------------------------------------
# A network from bare weights (torchvision files, registered MLflow models)


@dataclass(frozen=True)
class Architecture:
    """What `vgg.build_vgg` needs to rebuild a net whose weights are all one has."""

    config: str
    width: float
    num_classes: int
    crop_size: int


def unallocated_vgg(architecture: Architecture) -> VGG:
    """A `VGG` of `architecture` on the meta device: no memory, no random
    initialisation; weights are assigned or allocated (`to_empty`) after."""
    with torch.device("meta"):
        return VGG(
            architecture.config,
            num_classes=architecture.num_classes,
            width=architecture.width,
            crop_size=architecture.crop_size,
        )


def _conv_weights(state_dict: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    indexed = []
    for name, tensor in state_dict.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[2] == "weight" and tensor.ndim == 4:
            indexed.append((int(parts[1]), tensor))
    return [tensor for _, tensor in sorted(indexed, key=lambda item: item[0])]


def architecture_of(state_dict: Mapping[str, torch.Tensor]) -> Architecture:
    """The VGG config, width, class count and crop size that `state_dict`'s
    names and shapes fit (torchvision's layout, which `VGG` keeps).

    The class count is FC3's rows; the crop size follows from FC1's columns
    (channels x (crop/32)^2); the config is the one of Table 1 whose modules
    have exactly these names and shapes, checked on a meta-device net (no
    memory, no initialisation)."""
    convs = _conv_weights(state_dict)
    if (
        not convs
        or "classifier.6.weight" not in state_dict
        or "classifier.0.weight" not in state_dict
    ):
        raise ValueError(
            "not a VGG state dict: it needs features.N.weight convs and classifier.0/6"
        )
    num_classes = int(state_dict["classifier.6.weight"].shape[0])
    last_channels = int(convs[-1].shape[0])
    cells = int(state_dict["classifier.0.weight"].shape[1]) // last_channels
    side = math.isqrt(cells)
    if side * side * last_channels != state_dict["classifier.0.weight"].shape[1]:
        raise ValueError("not a VGG state dict: FC1's inputs are not channels x a square map")
    crop_size = side * 32
    shapes = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    widths = {last_channels / 512, int(convs[0].shape[0]) / 64}
    for config in CONFIGS:
        for width in sorted(widths):
            with torch.device("meta"):
                candidate = VGG(config, num_classes=num_classes, width=width, crop_size=crop_size)
            if {n: tuple(t.shape) for n, t in candidate.state_dict().items()} == shapes:
                return Architecture(config, width, num_classes, crop_size)
    raise ValueError(
        f"the state dict fits no VGG config of Table 1 ({len(convs)} convs, "
        f"{num_classes} classes, crop {crop_size})"
    )


def build_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], architecture: Architecture | None = None
) -> VGG:
    """A `VGG` holding `state_dict`'s weights, built without a random
    initialisation (the meta device, then the weights assigned)."""
    architecture = architecture or architecture_of(state_dict)
    model = unallocated_vgg(architecture)
    model.load_state_dict(dict(state_dict), assign=True)
    return model.eval()


__all__ = [
    "PAPER_SCALE_STEP",
    "Architecture",
    "SizeBucket",
    "SizeBuckets",
    "architecture_of",
    "average_posteriors",
    "batched",
    "bucketed",
    "build_from_state_dict",
    "crop_posteriors",
    "dense_posteriors",
    "multi_test_scales",
    "single_test_scale",
    "softmax_posteriors",
    "spatial_average",
    "top_k_errors",
]
