"""Colour statistics: moments summed per shard combine into mean and RGB eigenvectors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.stats import PixelMoments, colour_statistics, image_moments


def _png(pixels: np.ndarray) -> bytes:
    # PNG is lossless, so the expected moments are exact.
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_moments_of_several_images_give_their_pixels_mean_and_covariance():
    rng = np.random.default_rng(0)
    mixing = np.array([[40.0, 10.0, 0.0], [10.0, 30.0, 5.0], [0.0, 5.0, 20.0]])
    images = [
        np.clip(120 + rng.normal(size=(h, w, 3)) @ mixing, 0, 255).round()
        for h, w in [(30, 40), (25, 25), (50, 10)]
    ]
    # Summed in two parts, as two shards would be.
    moments = image_moments(_png(p) for p in images[:2]) + image_moments([_png(images[2])])
    statistics = colour_statistics(moments, "all")

    pixels = np.concatenate([p.reshape(-1, 3) for p in images])
    covariance = np.cov(pixels.T, bias=True)
    assert statistics.images == 3
    assert statistics.pixels == len(pixels)
    np.testing.assert_allclose(statistics.mean_rgb, pixels.mean(axis=0))
    np.testing.assert_allclose(statistics.std_rgb, pixels.std(axis=0))
    values = np.array(statistics.eigenvalues)
    vectors = np.array(statistics.eigenvectors)
    assert list(values) == sorted(values, reverse=True)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-9)
    # Each row is an eigenvector: together they rebuild the covariance.
    np.testing.assert_allclose(vectors.T @ np.diag(values) @ vectors, covariance, atol=1e-6)


def test_no_pixels_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        colour_statistics(PixelMoments.zero(), "none")
