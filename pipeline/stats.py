"""Colour statistics of the training images: mean RGB, and the eigenvalues and
eigenvectors of the RGB covariance that the paper's colour shift (after AlexNet)
perturbs images along. The shard tasks sum the moments of their sample's pixels
as they encode them (no second decoding pass) and the driver combines them."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.manifest import ColourStatistics


@dataclass
class PixelMoments:
    """Sums over RGB pixels (0-255): enough to combine into mean and covariance."""

    images: int
    pixels: int
    total: np.ndarray  # (3,) sum of pixel values
    outer: np.ndarray  # (3, 3) sum of outer products of pixel values

    @classmethod
    def zero(cls) -> PixelMoments:
        return cls(0, 0, np.zeros(3), np.zeros((3, 3)))

    def __add__(self, other: PixelMoments) -> PixelMoments:
        return PixelMoments(
            self.images + other.images,
            self.pixels + other.pixels,
            self.total + other.total,
            self.outer + other.outer,
        )


def image_moments(jpegs: Iterable[bytes]) -> PixelMoments:
    moments = PixelMoments.zero()
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            moments += pixel_moments(np.asarray(image.convert("RGB")))
    return moments


def pixel_moments(pixels: np.ndarray) -> PixelMoments:
    """The moments of one (H, W, 3) uint8 RGB image."""
    pixels = pixels.reshape(-1, 3)
    # One contiguous row per channel: reductions along rows are several times
    # faster than down the columns of the pixel-major array. float64 keeps
    # the sums of squares exact well past ImageNet's 1e11 pixels.
    channels = np.ascontiguousarray(pixels.T, dtype=np.float64)
    return PixelMoments(1, len(pixels), channels.sum(axis=1), channels @ channels.T)


def colour_statistics(moments: PixelMoments, sample: str) -> ColourStatistics:
    if moments.pixels == 0:
        raise ValueError("no pixels to compute colour statistics from")
    mean = moments.total / moments.pixels
    covariance = moments.outer / moments.pixels - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    # eigh returns eigenvectors as columns; the manifest stores one per row.
    vectors = eigenvectors[:, order].T
    # An eigenvector's sign is arbitrary; fixing it keeps manifests comparable.
    vectors *= np.where(vectors.sum(axis=1) < 0, -1.0, 1.0)[:, None]
    return ColourStatistics(
        images=moments.images,
        pixels=moments.pixels,
        sample=sample,
        mean_rgb=mean.tolist(),
        std_rgb=np.sqrt(np.diag(covariance)).tolist(),
        eigenvalues=eigenvalues[order].tolist(),
        eigenvectors=vectors.tolist(),
    )
