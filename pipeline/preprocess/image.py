"""One image: decode, convert to RGB, shrink (never enlarge) and re-encode, or
keep the original bytes when they are already an RGB JPEG small enough.

Colour and greyscale JPEGs (all but a few dozen of ILSVRC's 1.33 million) go
through libjpeg-turbo's TurboJPEG API (simplejpeg): a full decode, or a
DCT-domain one at 1/2, 1/4 or 1/8 when the shrink allows, torch's
antialiased bicubic resize and a 4:2:0 encode: Pillow's own defaults (its
resize filter, its subsampling at quality 90), about twice as fast. Other
images (CMYK, PNG, ...) and anything TurboJPEG refuses take Pillow's path,
which also words the reason an image is rejected.

Measured on real photos (`benchmarks/preprocess.py` prints it): libjpeg-turbo's
other M/8 scales (3/8, 5/8, 6/8, 7/8) decode more slowly than the full image, as
only 1/2, 1/4 and 1/8 have SIMD inverse DCTs, so they are never used.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # RGB JPEG
    width: int
    height: int
    # The RGB pixels `data` was encoded from, kept only when asked for (the
    # colour statistics' sample); None when the original bytes were kept.
    pixels: np.ndarray | None = None


class ImageRejected(Exception):
    """The bytes are not an image we can decode; the message is the reason."""


# Pillow's own decompression-bomb threshold (about 89 million pixels; the
# largest ILSVRC-2012 photos hold under 20 million). Above it, one image would
# take gigabytes in a shard task, or (a tiny file claiming a huge size) decode
# to garbage: rejected from the header, before any pixel is decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# JPEG colour spaces TurboJPEG decodes to RGB exactly as Pillow does. CMYK is
# not among them: Adobe's inverted CMYK needs Pillow's conversion.
_TURBO_COLOURSPACES = ("YCbCr", "Gray")


def shrunk_size(width: int, height: int, max_short_side: int) -> tuple[int, int] | None:
    """(width, height) with the shorter side at `max_short_side`, or None when the
    image is already small enough (images are never enlarged)."""
    short = min(width, height)
    if short <= max_short_side:
        return None
    scale = max_short_side / short
    if width <= height:
        return max_short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_short_side


def dct_reduction(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that divides the image down to at least `target`."""
    reduction = 1
    while reduction < 8 and all(
        -(-side // (2 * reduction)) >= wanted
        for side, wanted in ((width, target[0]), (height, target[1]))
    ):
        reduction *= 2
    return reduction


def process_image(
    data: bytes, max_short_side: int, jpeg_quality: int, keep_pixels: bool = False
) -> ProcessedImage:
    """Decode, convert to RGB, shrink and re-encode one image; ImageRejected if it
    cannot be decoded. An RGB JPEG that is small enough keeps its original bytes.
    With `keep_pixels` the result also holds the RGB pixels it encoded."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    processed = _with_turbojpeg(data, max_short_side, jpeg_quality, keep_pixels)
    if processed is None:
        processed = _with_pillow(data, max_short_side, jpeg_quality, keep_pixels)
    return processed


def _with_turbojpeg(
    data: bytes, max_short_side: int, jpeg_quality: int, keep_pixels: bool
) -> ProcessedImage | None:
    """The fast path, or None for an image it does not take (Pillow's then)."""
    if not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colourspace not in _TURBO_COLOURSPACES or width * height > MAX_PIXELS:
        return None
    target = shrunk_size(width, height, max_short_side)
    try:
        if target is None:
            if colourspace == "YCbCr" and not keep_pixels:
                # Decoding at 1/8 scale still reads every entropy-coded byte, so
                # a truncated or corrupt file fails here, at a fraction of the cost.
                simplejpeg.decode_jpeg(data, "RGB", min_factor=8)
                return ProcessedImage(data, width, height)
            pixels = simplejpeg.decode_jpeg(data, "RGB")
            if colourspace == "YCbCr":
                return ProcessedImage(data, width, height, pixels)
        else:
            reduction = dct_reduction(width, height, target)
            pixels = simplejpeg.decode_jpeg(
                data,
                "RGB",
                min_height=-(-height // reduction),
                min_width=-(-width // reduction),
            )
            pixels = resize_array(pixels, target)
    except ValueError:
        # strict decoding: a warning such as a truncated file; Pillow's path
        # decides and words the reason.
        return None
    encoded = simplejpeg.encode_jpeg(pixels, jpeg_quality, "RGB", "420")
    return ProcessedImage(
        encoded, pixels.shape[1], pixels.shape[0], pixels if keep_pixels else None
    )


def _with_pillow(
    data: bytes, max_short_side: int, jpeg_quality: int, keep_pixels: bool
) -> ProcessedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(
                    f"{width}x{height} pixels, above the {MAX_PIXELS:,}-pixel limit"
                )
            target = shrunk_size(width, height, max_short_side)
            is_jpeg = image.format == "JPEG"
            if target is None and is_jpeg and image.mode == "RGB":
                if not keep_pixels:
                    image.draft("RGB", (-(-width // 8), -(-height // 8)))
                image.load()
                pixels = np.asarray(image) if keep_pixels else None
                return ProcessedImage(data, width, height, pixels)
            if is_jpeg:
                # libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain, choosing the
                # largest reduction that stays at or above the requested size.
                image.draft("RGB", target or (width, height))
            image.load()
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            if target is not None:
                pixels = resize_array(pixels, target)
            encoded = simplejpeg.encode_jpeg(
                np.ascontiguousarray(pixels), jpeg_quality, "RGB", "420"
            )
            return ProcessedImage(
                encoded, pixels.shape[1], pixels.shape[0], pixels if keep_pixels else None
            )
    except ImageRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image Pillow can identify") from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed files
        raise ImageRejected(f"cannot decode: {exc or type(exc).__name__}") from exc


def resize_array(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of (H, W, 3) uint8 RGB to (width, height).

    The filter of Pillow's default resize (bicubic, widened when shrinking),
    so the stored images match what a Pillow script would store (PSNR in
    `benchmarks/preprocess.py`); torch's vectorised uint8 kernel costs
    a quarter of Pillow's on real photos.
    """
    import torch

    with warnings.catch_warnings():
        # torch warns that the array is read-only; the resize only reads it.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    resized = np.empty((size[1], size[0], 3), np.uint8)
    # The kernel behind torch.nn.functional.interpolate(mode="bicubic",
    # antialias=True), the same pixels, writing straight into an (H, W, 3)
    # array: interpolate returns channels-first, and turning that back costs
    # as much again as the resize (measured: 0.34 ms against 0.65 ms).
    torch.ops.aten._upsample_bicubic2d_aa.out(
        tensor,
        [size[1], size[0]],
        False,
        None,
        None,
        out=torch.from_numpy(resized).permute(2, 0, 1)[None],
    )
    return resized


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`resize_array` for a Pillow RGB image."""
    return Image.fromarray(resize_array(np.asarray(image), size))
