"""One image: decode, RGB, shrink (never enlarge), re-encode, or keep the original bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.preprocess import (
    ImageRejected,
    PreprocessConfig,
    process_image,
    resize,
    shrunk_size,
)
from pipeline.preprocess.image import resize_array


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Colour gradients and blobs a few dozen pixels wide, with a little noise:
    detail that survives an 8x reduction, so resampling errors would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        (x * 255 / width),
        (y * 255 / height),
        127 + 60 * np.sin(x / 40.0) * np.cos(y / 30.0) + rng.normal(0, 4, (height, width)),
    ]
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        ((500, 375), 256, (341, 256)),
        ((375, 500), 256, (256, 341)),
        ((300, 300), 256, (256, 256)),
        ((256, 900), 256, None),
        ((100, 80), 256, None),
    ],
)
def test_shrunk_size_shrinks_the_shorter_side_and_never_enlarges(size, limit, expected):
    assert shrunk_size(*size, limit) == expected


@pytest.mark.parametrize("size", [(500, 375), (1200, 900), (333, 1999)])
def test_large_images_come_out_as_rgb_jpegs_with_the_shorter_side_at_the_limit(size):
    result = process_image(_encode(_photo(*size), quality=95), 128, 90)

    image = _decode(result.data)
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert min(image.size) == 128
    assert image.size == (result.width, result.height) == shrunk_size(*size, 128)


def test_dct_downscaled_decode_looks_like_a_full_decode():
    source = _photo(1024, 768)
    data = _encode(source, quality=95)

    result = _decode(process_image(data, 96, 95).data)
    reference = source.resize(result.size, Image.Resampling.BILINEAR, reducing_gap=None)

    difference = np.abs(np.asarray(result, float) - np.asarray(reference, float))
    assert difference.mean() < 2.0


def test_resize_matches_pillows_default_antialiased_bicubic():
    image = _photo(500, 375)
    ours = np.asarray(resize(image, (341, 256)), float)
    pillow = np.asarray(image.resize((341, 256)), float)
    assert ours.shape == pillow.shape == (256, 341, 3)
    assert np.abs(ours - pillow).mean() < 0.1


def test_a_small_rgb_jpeg_keeps_its_original_bytes():
    data = _encode(_photo(120, 90), quality=77)
    result = process_image(data, 128, 90)
    assert result.data == data
    assert (result.width, result.height) == (120, 90)


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "P"), ("PNG", "RGBA")],
)
@pytest.mark.parametrize("size", [(100, 90), (300, 200)])
def test_other_modes_and_formats_are_stored_as_rgb_jpegs(fmt, mode, size):
    data = _encode(_photo(*size).convert(mode), fmt)

    result = process_image(data, 128, 90)

    image = _decode(result.data)
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert min(image.size) == min(128, min(size))


def test_cmyk_comes_out_in_the_right_colours():
    photo = _photo(64, 64)
    result = _decode(process_image(_encode(photo.convert("CMYK"), quality=95), 128, 95).data)
    difference = np.abs(np.asarray(result, float) - np.asarray(photo, float))
    assert difference.mean() < 4.0


@pytest.mark.parametrize("size", [(100, 90), (600, 400)])
def test_truncated_jpegs_are_rejected_even_when_small_enough_to_keep(size):
    data = _encode(_photo(*size), quality=90)
    with pytest.raises(ImageRejected, match="truncated"):
        process_image(data[: len(data) // 2], 128, 90)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html>not found</html>", "not an image"),
    ],
)
def test_undecodable_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        process_image(data, 128, 90)


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real 64x48 JPEG whose frame header (SOF0) claims width x height:
    a few hundred bytes that would decode to a huge picture."""
    data = bytearray(_encode(_photo(64, 48), quality=50))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_jpeg_claiming(12000, 12000), id="small-jpeg-claiming-12000x12000"),
        pytest.param(_encode(Image.new("1", (11000, 11000)), "PNG"), id="png-11000x11000"),
    ],
)
def test_images_above_the_pixel_limit_are_rejected_before_decoding(data):
    assert len(data) < 100_000  # what a source can hand over cheaply
    with pytest.raises(ImageRejected, match="pixel|bomb"):
        process_image(data, 512, 90)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_short_side", 0, "max_short_side must be 16-65535"),
        ("jpeg_quality", 101, "jpeg_quality must be 1-100"),
        ("shard_rows", 0, "shard_rows must be at least 1"),
        ("seed", -1, "seed must be 0 or more"),
        ("max_rejected_fraction", 1.5, "max_rejected_fraction must be between 0 and 1"),
        ("stats_images", 0, "stats_images must be at least 1"),
    ],
)
def test_config_names_the_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**{field: value})


def test_resize_array_gives_torchs_interpolate_pixels_exactly():
    import torch

    pixels = np.asarray(_photo(500, 375))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None],
        size=(256, 341),
        mode="bicubic",
        antialias=True,
    )[0].permute(1, 2, 0)
    np.testing.assert_array_equal(resize_array(pixels, (341, 256)), expected.numpy())
