"""One image: decode, convert to RGB, shrink (never enlarge) and re-encode, or
keep the original bytes when they are already an RGB JPEG small enough."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # RGB JPEG
    width: int
    height: int


class ImageRejected(Exception):
    """The bytes are not an image we can decode; the message is the reason."""


# Pillow's own decompression-bomb threshold (about 89 million pixels; the
# largest ILSVRC-2012 photos hold under 20 million). Above it, one image would
# take gigabytes in a shard task, or (a tiny file claiming a huge size) decode
# to garbage: rejected from the header, before any pixel is decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


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


def process_image(data: bytes, max_short_side: int, jpeg_quality: int) -> ProcessedImage:
    """Decode, convert to RGB, shrink and re-encode one image; ImageRejected if it
    cannot be decoded. An RGB JPEG that is small enough keeps its original bytes."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
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
                # Decoding at 1/8 scale still reads every entropy-coded byte, so
                # a truncated or corrupt file fails here, at a fraction of the cost.
                image.draft("RGB", (math.ceil(width / 8), math.ceil(height / 8)))
                image.load()
                return ProcessedImage(data, width, height)
            if is_jpeg:
                # libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain, choosing the
                # largest reduction that stays at or above the requested size: at
                # most half the size is several times faster than a full decode.
                image.draft("RGB", target or (width, height))
            image.load()
            pixels = image if image.mode == "RGB" else image.convert("RGB")
            if target is not None:
                pixels = resize(pixels, target)
            buffer = io.BytesIO()
            pixels.save(buffer, "JPEG", quality=jpeg_quality)
            return ProcessedImage(buffer.getvalue(), pixels.width, pixels.height)
    except ImageRejected:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not an image Pillow can identify") from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed files
        raise ImageRejected(f"cannot decode: {exc or type(exc).__name__}") from exc


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Antialiased bilinear resize of an RGB image to (width, height).

    torchvision's uint8 kernel is vectorised and several times faster than
    Pillow's resize, which measurement showed to be the largest cost per image;
    the filter is the same (Pillow's antialiased bilinear, torchvision's default).
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    with warnings.catch_warnings():
        # torch warns that the array is read-only; the resize only reads it.
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    resized = tvf.resize(
        pixels, [size[1], size[0]], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    return Image.fromarray(resized.permute(1, 2, 0).contiguous().numpy())
