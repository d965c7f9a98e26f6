"""The paper's train- and test-time image transforms (PAPER.md sections 2 and 3).

They are split where the hardware splits: the CPU side decodes JPEG bytes and
returns uint8 HWC arrays (rescale to S, random crop, flip; whole images at a
test scale Q; the multi-crop grid), and the device side (`to_model_input`,
`prepare_training_batch`) turns a uint8 batch into the float input on the
training device: mean subtraction and the PCA colour shift cost the CPU
nothing, and a uint8 batch is a quarter of float32 over the host-device link.

Pixel units: model inputs are RGB in 0-255 minus the training set's mean RGB,
as the paper's Caffe models took them (no division by a standard deviation).
The colour-shift eigenvalues are those of the covariance of RGB values scaled
to [0, 1], the unit in which AlexNet's `a_i * lambda_i` shift is a few grey
levels; the shift is converted to 0-255 when it is added.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.BILINEAR
COLOUR_SHIFT_STD = 0.1  # AlexNet's a_i ~ N(0, 0.1)


# ---------------------------------------------------------------------------
# Geometry: where a crop of the image rescaled to S lies.


def rescaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(height, width) after an isotropic rescale that makes the shorter side `scale`."""
    ratio = scale / min(height, width)
    return max(scale, round(height * ratio)), max(scale, round(width * ratio))


def sample_scale(rng: np.random.Generator, scale: int | tuple[int, int]) -> int:
    """S itself for single-scale training; for scale jittering a draw uniform
    over the integers of [Smin, Smax] (both ends included), per image."""
    if isinstance(scale, int):
        return scale
    low, high = scale
    return int(rng.integers(low, high + 1))


@dataclass(frozen=True)
class CropBox:
    """A square crop of the image rescaled so its shorter side is `scale`.

    `top` and `left` are in that rescaled frame; `flip` mirrors the crop."""

    scale: int
    top: int
    left: int
    size: int
    flip: bool = False

    def in_source(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The crop as (left, upper, right, lower) in the frame of a `height` x
        `width` image, the form Pillow's `resize(box=...)` takes."""
        rescaled_h, rescaled_w = rescaled_size(height, width, self.scale)
        sy, sx = height / rescaled_h, width / rescaled_w
        return (
            self.left * sx,
            self.top * sy,
            (self.left + self.size) * sx,
            (self.top + self.size) * sy,
        )


def random_crop_box(
    height: int,
    width: int,
    scale: int | tuple[int, int],
    crop_size: int,
    rng: np.random.Generator,
    flip_probability: float = 0.5,
) -> CropBox:
    """The paper's training crop: S fixed or jittered, a uniformly placed crop of
    the rescaled image, and a horizontal flip with `flip_probability`."""
    s = sample_scale(rng, scale)
    if s < crop_size:
        raise ValueError(f"training scale {s} is smaller than the crop size {crop_size}")
    rescaled_h, rescaled_w = rescaled_size(height, width, s)
    top = int(rng.integers(0, rescaled_h - crop_size + 1))
    left = int(rng.integers(0, rescaled_w - crop_size + 1))
    return CropBox(s, top, left, crop_size, bool(rng.random() < flip_probability))


def center_crop_box(height: int, width: int, scale: int, crop_size: int) -> CropBox:
    rescaled_h, rescaled_w = rescaled_size(height, width, scale)
    return CropBox(scale, (rescaled_h - crop_size) // 2, (rescaled_w - crop_size) // 2, crop_size)


def grid_offsets(length: int, crop_size: int, points: int = 5) -> list[int]:
    """`points` crop offsets spread evenly from 0 to length - crop_size."""
    span = length - crop_size
    return [round(i * span / (points - 1)) for i in range(points)]


# ---------------------------------------------------------------------------
# CPU side: JPEG bytes to uint8 HWC arrays.


def open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _as_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _draft(image: Image.Image, height: int, width: int) -> Image.Image:
    """Let the JPEG decoder downscale in the DCT domain (by 1/2, 1/4 or 1/8) to
    no smaller than (height, width): several times cheaper than a full decode
    when the target is at most half the stored size; a no-op otherwise."""
    if image.format == "JPEG":
        image.draft("RGB", (width, height))
    return image


def decode_crop(data: bytes, box: CropBox) -> np.ndarray:
    """The fast crop path: decode at the smallest DCT scale that still covers the
    rescaled image, then resample only the crop's region of it. Matches
    `rescale_then_crop` up to interpolation."""
    image = open_image(data)
    height, width = image.height, image.width
    _draft(image, *rescaled_size(height, width, box.scale))
    left, upper, right, lower = box.in_source(height, width)
    # After draft the decoded image is smaller; map the box into its frame.
    sx, sy = image.width / width, image.height / height
    region = (left * sx, upper * sy, right * sx, lower * sy)
    image = image.convert("RGB") if image.mode != "RGB" else image
    crop = image.resize((box.size, box.size), RESAMPLE, box=region)
    if box.flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop)


def rescale_then_crop(data: bytes, box: CropBox) -> np.ndarray:
    """The reference path, as the paper describes it: rescale the whole image to
    S, then crop (and flip). Slower; used to check `decode_crop`."""
    image = open_image(data)
    rescaled_h, rescaled_w = rescaled_size(image.height, image.width, box.scale)
    rescaled = _as_rgb_array(image.convert("RGB").resize((rescaled_w, rescaled_h), RESAMPLE))
    crop = rescaled[box.top : box.top + box.size, box.left : box.left + box.size]
    return np.ascontiguousarray(crop[:, ::-1] if box.flip else crop)


def decode_rescaled(data: bytes, scale: int) -> np.ndarray:
    """The whole image with its shorter side rescaled to `scale` (test scale Q),
    for dense evaluation; DCT-domain downscaling when Q is small enough."""
    image = open_image(data)
    rescaled_h, rescaled_w = rescaled_size(image.height, image.width, scale)
    image = _draft(image, rescaled_h, rescaled_w)
    image = image.convert("RGB") if image.mode != "RGB" else image
    return np.asarray(image.resize((rescaled_w, rescaled_h), RESAMPLE))


def multi_crop(image: np.ndarray, crop_size: int, grid: int = 5) -> np.ndarray:
    """The paper's multi-crop evaluation views of one rescaled image (HWC):
    `grid` x `grid` crops on a regular grid (corners and centre included), then
    the same crops flipped: (2 * grid * grid, crop_size, crop_size, 3)."""
    height, width = image.shape[:2]
    if min(height, width) < crop_size:
        raise ValueError(f"image {height}x{width} is smaller than the crop size {crop_size}")
    crops = np.stack(
        [
            image[top : top + crop_size, left : left + crop_size]
            for top in grid_offsets(height, crop_size, grid)
            for left in grid_offsets(width, crop_size, grid)
        ]
    )
    return np.concatenate([crops, crops[:, :, ::-1]])


def decode_crops_on_device(
    jpegs: list[bytes], boxes: list[CropBox], device: torch.device | str
) -> torch.Tensor:
    """The GPU decode path: torchvision's JPEG decoder on `device` (nvJPEG on a
    GPU), then rescale-then-crop there, so the CPU only moves bytes. Returns a
    uint8 NHWC batch like the CPU path. Works on the CPU too (tests use it)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    crops = []
    for image, box in zip(images, boxes, strict=True):
        rescaled = F.resize(image, list(rescaled_size(*image.shape[1:], box.scale)), antialias=True)
        crop = rescaled[:, box.top : box.top + box.size, box.left : box.left + box.size]
        crops.append(crop.flip(-1) if box.flip else crop)
    return torch.stack(crops).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------
# Device side: uint8 batches to model input.


@dataclass(frozen=True)
class PixelStatistics:
    """The training set's pixel statistics, as the dataset manifest stores them.

    mean_rgb: mean R, G, B in 0-255. eigenvalues (3,) of the RGB covariance with
    values scaled to [0, 1]; eigenvectors[i] is the unit eigenvector of
    eigenvalues[i]."""

    mean_rgb: tuple[float, float, float]
    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]

    @classmethod
    def imagenet(cls) -> PixelStatistics:
        """Widely used ILSVRC-2012 figures (fb.resnet.torch), for when no manifest
        is at hand, e.g. evaluating torchvision weights on another dataset."""
        return cls(
            mean_rgb=(123.675, 116.28, 103.53),
            eigenvalues=(0.2175, 0.0188, 0.0045),
            eigenvectors=(
                (-0.5675, -0.5808, -0.5836),
                (0.7192, -0.0045, -0.6948),
                (0.4009, -0.8140, 0.4203),
            ),
        )


def colour_shift(
    count: int,
    stats: PixelStatistics,
    *,
    std: float = COLOUR_SHIFT_STD,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """AlexNet's PCA lighting noise, one RGB offset per image in 0-255 units:
    sum_i a_i * lambda_i * p_i with a_i ~ N(0, std) drawn per image.

    The a_i are drawn on the CPU (with `generator`, a CPU generator) and only
    the (count, 3) result moves to `device`: torch refuses a CPU generator for a
    CUDA draw, and drawing on the CPU makes a GPU run add exactly the noise a
    CPU run adds."""
    alphas = torch.randn(count, 3, generator=generator) * std
    eigenvalues = torch.tensor(stats.eigenvalues)
    eigenvectors = torch.tensor(stats.eigenvectors)
    return (255.0 * (alphas * eigenvalues) @ eigenvectors).to(device)


def to_model_input(
    images: torch.Tensor,
    mean_rgb: tuple[float, float, float] | torch.Tensor,
    std_rgb: tuple[float, float, float] | None = None,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """A uint8 NHWC batch to float32 NCHW minus the mean RGB (0-255 units). With
    `std_rgb` (0-255 units) it also divides, which torchvision's weights expect."""
    x = images.permute(0, 3, 1, 2).float()
    mean = torch.as_tensor(mean_rgb, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = x - mean
    if std_rgb is not None:
        x = x / torch.as_tensor(std_rgb, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


def prepare_training_batch(
    images: torch.Tensor,
    stats: PixelStatistics,
    *,
    colour_shift_std: float = COLOUR_SHIFT_STD,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """The device half of the training augmentation: float conversion, mean
    subtraction and the per-image colour shift of a uint8 NHWC batch."""
    x = to_model_input(images, stats.mean_rgb)
    if colour_shift_std > 0:
        shift = colour_shift(
            len(x), stats, std=colour_shift_std, generator=generator, device=x.device
        )
        x = x + shift.view(-1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass(frozen=True)
class TrainingAugmentation:
    """The paper's training transform, whole, in one object (section 2): draw S
    (fixed or jittered), a uniformly placed crop and a horizontal flip per
    image; carry the draws through a record batch as plain columns; decode the
    crops on the CPU (Pillow) or on the device (torchvision, nvJPEG on a GPU);
    and finish on the device (float, mean, PCA colour shift).

    A new augmentation setting is a field here: the data pipeline takes this
    object as one argument and calls its methods, so nothing in between
    changes. The draws come from generators the caller seeds, so an epoch
    repeats for a seed whatever the scheduling."""

    scale: int | tuple[int, int]  # S, or (Smin, Smax) for scale jittering
    crop_size: int = 224
    flip_probability: float = 0.5
    colour_shift_std: float = COLOUR_SHIFT_STD

    # Record-batch columns the draws travel in between reading and decoding.
    COLUMNS = ("scale", "top", "left", "flip")

    def draw(
        self, heights: Sequence[int], widths: Sequence[int], rng: np.random.Generator
    ) -> list[CropBox]:
        """Each image's crop box, in order, from `rng`."""
        return [
            random_crop_box(int(h), int(w), self.scale, self.crop_size, rng, self.flip_probability)
            for h, w in zip(heights, widths, strict=True)
        ]

    def encode(self, boxes: Sequence[CropBox]) -> dict[str, np.ndarray]:
        """The boxes as columns (`COLUMNS`) for a record batch."""
        return {
            "scale": np.array([b.scale for b in boxes], np.int32),
            "top": np.array([b.top for b in boxes], np.int32),
            "left": np.array([b.left for b in boxes], np.int32),
            "flip": np.array([b.flip for b in boxes], np.bool_),
        }

    def decode_boxes(self, columns: Mapping[str, Sequence]) -> list[CropBox]:
        """The boxes `encode` wrote, read back from a batch's columns."""
        return [
            CropBox(int(s), int(t), int(left), self.crop_size, bool(f))
            for s, t, left, f in zip(*(columns[name] for name in self.COLUMNS), strict=True)
        ]

    def decode(self, jpegs: Sequence[bytes], boxes: Sequence[CropBox]) -> np.ndarray:
        """The CPU half: uint8 crops (N, crop, crop, 3), DCT-domain downscaling
        where it applies (`decode_crop`). Each crop is copied into the batch as
        soon as it is decoded, still in the core's cache: stacking them all at
        the end read them back from memory (after the decode itself, the largest
        cost py-spy found in a Ray read task)."""
        crops = np.empty((len(jpegs), self.crop_size, self.crop_size, 3), np.uint8)
        for index, (data, box) in enumerate(zip(jpegs, boxes, strict=True)):
            crops[index] = decode_crop(data, box)
        return crops

    def decode_on_device(
        self, jpegs: Sequence[bytes], boxes: Sequence[CropBox], device: torch.device | str
    ) -> torch.Tensor:
        """The same crops decoded on `device` (`decode_crops_on_device`)."""
        return decode_crops_on_device(list(jpegs), list(boxes), device)

    def finish(
        self,
        images: torch.Tensor,
        stats: PixelStatistics,
        *,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """The device half on a uint8 NHWC batch (`prepare_training_batch`), the
        colour noise drawn on the CPU `generator`."""
        return prepare_training_batch(
            images,
            stats,
            colour_shift_std=self.colour_shift_std,
            generator=generator,
            channels_last=channels_last,
        )


def crop_count(grid: int = 5) -> int:
    """Views per image and scale in multi-crop evaluation (50 for the paper's grid)."""
    return 2 * grid * grid


__all__ = [
    "CropBox",
    "PixelStatistics",
    "TrainingAugmentation",
    "center_crop_box",
    "colour_shift",
    "crop_count",
    "decode_crop",
    "decode_crops_on_device",
    "decode_rescaled",
    "grid_offsets",
    "multi_crop",
    "prepare_training_batch",
    "random_crop_box",
    "rescale_then_crop",
    "rescaled_size",
    "sample_scale",
    "to_model_input",
]
