"""A benchmark source of real photographs in the ILSVRC-2012 folder layout, for
when no ILSVRC JPEGs are at hand.

    python -m benchmarks.photos DIR [--images 4000]

The photographs are the ones scikit-image and scikit-learn ship inside their
packages (nothing is downloaded): `PHOTOS` names them. Each image is a random
crop of one of them, flipped at random and resized to ILSVRC's typical sizes
(most 500 px on the long side at 4:3, a tenth up to 1,300 px), saved as a
baseline JPEG at quality 85-95 (mostly 90), with ILSVRC's quirks at about its
rates or above: greyscale JPEGs, CMYK JPEGs and a PNG named .JPEG. Small
photos are enlarged for some crops, which leaves them smoother than a camera's
output, so decoding them costs a little less than real ILSVRC JPEGs do: the
README's figures name this source, and `--source` runs on real ones.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# Real photographs, 300-1,411 px, bundled with the packages.
PHOTOS: tuple[str, ...] = (
    "skimage.data.astronaut",
    "skimage.data.chelsea",
    "skimage.data.coffee",
    "skimage.data.rocket",
    "skimage.data.hubble_deep_field",
    "skimage.data.retina",
    "skimage.data.immunohistochemistry",
    "skimage.data.stereo_motorcycle",
    "skimage.data.camera",
    "sklearn china.jpg",
    "sklearn flower.jpg",
)
DESCRIPTION_FILE = "photo-source.json"


def _loader(name: str) -> Callable[[], np.ndarray]:
    if name.startswith("sklearn "):
        from sklearn.datasets import load_sample_image

        return lambda: load_sample_image(name.split(" ", 1)[1])
    import skimage.data

    function = getattr(skimage.data, name.rsplit(".", 1)[1])
    if name.endswith("stereo_motorcycle"):
        return lambda: function()[0]  # the left view
    return function


def load_photos() -> dict[str, Image.Image]:
    photos = {}
    for name in PHOTOS:
        photo = Image.fromarray(_loader(name)())
        photos[name] = photo.convert("RGB")  # camera is greyscale: kept as such below
    return photos


def _size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = 500 if rng.random() < 0.9 else int(rng.integers(501, 1301))
    short_side = round(long_side * rng.choice([0.75, 0.75, 0.75, 0.666, 0.8, 1.0]))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def make_photo_source(folder: Path, count: int, seed: int = 0, classes: int = 10) -> dict:
    """Write `count` images to train/<wnid>/ and val/<wnid>/ (one in five in val)
    under `folder`, and a description of them (which photo, size, quirk) beside."""
    photos = load_photos()
    names = list(photos)
    rng = np.random.default_rng(seed)
    quirks = {"greyscale": 0, "cmyk": 0, "png named .JPEG": 0}
    per_photo = dict.fromkeys(names, 0)
    for number in range(count):
        name = names[number % len(names)]
        photo = photos[name]
        per_photo[name] += 1
        width, height = _size(rng)
        # Crop a random window of the photo's own aspect, then resize: at most
        # 1.6x enlargement, so most images keep the photo's real texture.
        zoom = max(width / photo.width, height / photo.height) * rng.uniform(0.6, 1.0)
        zoom = max(zoom, max(width / photo.width, height / photo.height) / 1.6)
        crop_w = min(photo.width, round(width / zoom))
        crop_h = min(photo.height, round(height / zoom))
        left = int(rng.integers(0, photo.width - crop_w + 1))
        top = int(rng.integers(0, photo.height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(
            (width, height), Image.Resampling.LANCZOS
        )
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        split = "val" if number % 5 == 0 else "train"
        wnid = f"n{number // 5 % classes:08d}"
        key = f"{wnid}_{number}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
        path = folder / split / wnid / key
        path.parent.mkdir(parents=True, exist_ok=True)
        quality = int(rng.choice([85, 90, 90, 90, 92, 95]))
        if name.endswith("camera") or number % 97 == 1:
            quirks["greyscale"] += 1
            image.convert("L").save(path, "JPEG", quality=quality)
        elif number % 211 == 2:
            quirks["cmyk"] += 1
            image.convert("CMYK").save(path, "JPEG", quality=quality)
        elif number % 1009 == 3:
            quirks["png named .JPEG"] += 1
            image.save(path, "PNG")
        else:
            image.save(path, "JPEG", quality=quality)
    description = {
        "images": count,
        "photos": per_photo,
        "quirks": quirks,
        "sizes": "90% 500 px on the long side, 10% 501-1300 px; aspect 4:3 mostly",
        "quality": "85-95, mostly 90",
        "seed": seed,
    }
    (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1) + "\n")
    return description


def describe_source(folder: str | Path) -> str:
    """One line naming the images of a source: the photos, for one this module made."""
    path = Path(folder) / DESCRIPTION_FILE
    if not path.is_file():
        return f"images from {folder}"
    description = json.loads(path.read_text())
    photos = ", ".join(name.replace("skimage.data.", "") for name in description["photos"])
    return (
        f"{description['images']} crops of real photos ({photos}; from scikit-image and "
        f"scikit-learn), ILSVRC-like sizes and quirks {description['quirks']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_photo_source(args.folder, args.images, args.seed)
    print(f"wrote {describe_source(args.folder)} to {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
