"""A small real data set in the ILSVRC-2012 layouts, made from data a package ships.

scikit-learn's handwritten digits (10 classes, 1,797 8x8 images) become colour
JPEGs of varied sizes and aspect ratios under wnid-like class names, split into
train and val, and written in any of the layouts `pipeline.sources` reads. The
same seed gives the same images, names and bytes in every layout, so the layouts
can be checked against each other. `quirks=True` adds the ImageNet quirks
(PAPER.md section 6) and the damaged files a real copy may hold.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.sources import (
    DEVKIT_DIR,
    DEVKIT_TAR,
    GROUND_TRUTH,
    LOC_SYNSETS,
    LOC_VAL_CSV,
    META_MAT,
    TRAIN_TAR,
    VAL_TAR,
)

Layout = Literal["folders", "flat-val", "tars"]
ValLabels = Literal["loc-csv", "devkit"]
LAYOUT_CHOICES: tuple[str, ...] = ("folders", "flat-val", "tars")
VAL_LABEL_CHOICES: tuple[str, ...] = ("loc-csv", "devkit")

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Image sides are drawn from this range (pixels), so that tests with a small
# max_short_side see images to shrink, images already small enough, and images
# large enough for the decoder's DCT-domain downscaling.
MIN_SIDE, MAX_SIDE = 80, 400


def demo_wnid(digit: int) -> str:
    return f"n{digit:08d}"


@dataclass(frozen=True)
class DemoImage:
    split: str
    key: str  # file name, as in ILSVRC-2012
    wnid: str
    data: bytes
    quirk: str = ""  # "" for an ordinary RGB JPEG


@dataclass
class DemoData:
    root: Path
    layout: str
    val_labels: str
    images: list[DemoImage] = field(repr=False)

    @property
    def wnids(self) -> list[str]:
        return sorted({image.wnid for image in self.images})

    def count(self, split: str) -> int:
        return sum(image.split == split for image in self.images)

    def quirks(self) -> dict[str, str]:
        """Key -> quirk for the quirk files."""
        return {image.key: image.quirk for image in self.images if image.quirk}


def make_demo_data(
    output: str | Path,
    *,
    layout: Layout = "folders",
    val_labels: ValLabels | None = None,
    quirks: bool = False,
    per_class: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DemoData:
    """Write the demo data set to the local folder `output` and describe it.

    `val_labels` says how a flat validation set is labelled: "loc-csv" (Kaggle's
    LOC_val_solution.csv, the default for flat-val) or "devkit" (the devkit
    tarball, the default for tars). `per_class` keeps that many digits per class
    for quick tests (all 1,797 when None).
    """
    if layout not in LAYOUT_CHOICES:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, not {layout!r}")
    if val_labels is None:
        val_labels = "devkit" if layout == "tars" else "loc-csv"
    if val_labels not in VAL_LABEL_CHOICES:
        raise ConfigError(f"val_labels must be one of {', '.join(VAL_LABEL_CHOICES)}")
    if per_class is not None and per_class < 2:
        raise ConfigError("per_class must be at least 2, so that train and val both get images")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    root = Path(output)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; demo data goes into a new folder")

    images = _demo_images(per_class, val_fraction, quirks, seed)
    root.mkdir(parents=True, exist_ok=True)
    # ILSVRC2012_IDs in a seeded order unrelated to the sorted wnids, as in the
    # real devkit, so that a reader using the id as a class index is caught.
    ids = {
        demo_wnid(d): int(i) + 1 for d, i in enumerate(np.random.default_rng(seed).permutation(10))
    }
    if layout == "folders":
        for image in images:
            _write(root / image.split / image.wnid / image.key, image.data)
    else:
        val = [image for image in images if image.split == "val"]
        if layout == "flat-val":
            for image in images:
                folder = root / "train" / image.wnid if image.split == "train" else root / "val"
                _write(folder / image.key, image.data)
        else:
            train = [image for image in images if image.split == "train"]
            _write(root / TRAIN_TAR, _train_tar(train))
            _write(root / VAL_TAR, _tar((image.key, image.data) for image in val))
        if val_labels == "devkit":
            _write(root / DEVKIT_TAR, _devkit_tarball(val, ids))
        else:
            _write(root / LOC_VAL_CSV, _loc_val_csv(val, seed))
    if layout == "folders" or val_labels == "loc-csv":
        lines = [f"{demo_wnid(d)} {name}\n" for d, name in enumerate(DIGIT_NAMES)]
        _write(root / LOC_SYNSETS, "".join(lines).encode())
    return DemoData(root, layout, val_labels, images)


def _demo_images(
    per_class: int | None, val_fraction: float, quirks: bool, seed: int
) -> list[DemoImage]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images: list[DemoImage] = []
    val_images: list[tuple[int, np.ndarray]] = []
    for digit in range(10):
        wnid = demo_wnid(digit)
        indices = rng.permutation(np.flatnonzero(digits.target == digit))[:per_class]
        n_val = max(1, round(len(indices) * val_fraction))
        for position, index in enumerate(indices):
            if position < n_val:
                val_images.append((digit, digits.images[index]))
            else:
                data = _encode(_render(digits.images[index], rng), rng)
                images.append(DemoImage("train", f"{wnid}_{index}.JPEG", wnid, data))
    # Validation files are numbered over a shuffled order, as in ILSVRC-2012,
    # so a flat val/ does not group classes.
    for number, position in enumerate(rng.permutation(len(val_images)), start=1):
        digit, pixels = val_images[position]
        data = _encode(_render(pixels, rng), rng)
        key = f"ILSVRC2012_val_{number:08d}.JPEG"
        images.append(DemoImage("val", key, demo_wnid(digit), data))
    if quirks:
        images.extend(_quirk_images(digits.images, len(val_images), rng))
    return images


def _quirk_images(pixels: np.ndarray, n_val: int, rng: np.random.Generator) -> list[DemoImage]:
    """One file per ImageNet quirk, under names that continue the real numbering."""
    rgb = _render(pixels[0], rng)
    jpeg = _encode(rgb, rng)
    png = io.BytesIO()
    rgb.save(png, "PNG")
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, "JPEG", quality=90)
    grey = io.BytesIO()
    rgb.convert("L").save(grey, "JPEG", quality=90)
    return [
        DemoImage("train", "n00000000_90001.JPEG", demo_wnid(0), cmyk.getvalue(), "cmyk"),
        DemoImage("train", "n00000001_90002.JPEG", demo_wnid(1), grey.getvalue(), "grayscale"),
        DemoImage("train", "n00000002_90003.JPEG", demo_wnid(2), png.getvalue(), "png"),
        DemoImage("train", "n00000003_90004.JPEG", demo_wnid(3), b"", "zero-byte"),
        DemoImage(
            "val",
            f"ILSVRC2012_val_{n_val + 1:08d}.JPEG",
            demo_wnid(4),
            jpeg[: len(jpeg) // 2],
            "truncated",
        ),
    ]


def _render(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An 8x8 digit (0-16 ink) as a smooth colour picture of a random size.

    Dark, tinted ink on a light, tinted background, and a photo-like aspect
    ratio (4:5 to 5:4): the colours vary, but every image keeps the contrast
    and shape that let the demo's narrow nets learn the classes in minutes on
    a CPU (random ink and background colours, or 5:1 stretches, left them at
    chance for many epochs)."""
    background = rng.integers(150, 256, size=3)
    ink = rng.integers(0, 100, size=3)
    ink_fraction = (digit / 16.0)[..., None]
    pixels = background + (ink - background) * ink_fraction
    small = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    short = int(rng.integers(MIN_SIDE, round(MAX_SIDE / 1.25) + 1))
    long = min(MAX_SIDE, round(short * rng.uniform(1.0, 1.25)))
    width, height = (short, long) if rng.random() < 0.5 else (long, short)
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _encode(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _train_tar(train: list[DemoImage]) -> bytes:
    """The official training tar: one inner tar per class, `<wnid>.tar`."""
    wnids = sorted({image.wnid for image in train})
    inner = {
        wnid: _tar((image.key, image.data) for image in train if image.wnid == wnid)
        for wnid in wnids
    }
    return _tar((f"{wnid}.tar", inner[wnid]) for wnid in wnids)


def _devkit_tarball(val: list[DemoImage], ids: dict[str, int]) -> bytes:
    import scipy.io

    leaves = [
        (ids[demo_wnid(d)], demo_wnid(d), name, f"handwritten digit {d}", 0, 0)
        for d, name in enumerate(DIGIT_NAMES)
    ]
    # The real meta.mat also lists the non-leaf synsets of the hierarchy after
    # the 1,000 classes; one stands for them here.
    parent = (11, "n09999999", "digit", "a numeral", 10, 1)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height"]
    synsets = np.empty(len(leaves) + 1, dtype=[(name, object) for name in fields])
    for position, record in enumerate(sorted(leaves) + [parent]):
        synsets[position] = record
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    numbered = sorted(val, key=lambda image: image.key)
    truth = "".join(f"{ids[image.wnid]}\n" for image in numbered).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((META_MAT, meta.getvalue()), (GROUND_TRUTH, truth)):
            info = tarfile.TarInfo(f"{DEVKIT_DIR}/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _loc_val_csv(val: list[DemoImage], seed: int) -> bytes:
    """Kaggle's labels: `ImageId,PredictionString` with the wnid first, in no set order."""
    lines = ["ImageId,PredictionString\n"]
    for position in np.random.default_rng(seed + 1).permutation(len(val)):
        image = val[position]
        lines.append(f"{image.key.rsplit('.', 1)[0]},{image.wnid} 0 0 63 63\n")
    return "".join(lines).encode()
