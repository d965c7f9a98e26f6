"""Our preprocess against the script a user would write instead, on the same images.

    python benchmarks/preprocess.py SOURCE [--sizes 256 512] [--limit N]
    python benchmarks/preprocess.py --make-photo-source DIR [--images 2000]

The naive script runs in one process: PIL open, convert to RGB, resize the
shorter side with Pillow's default filter (bicubic; only when that shrinks, as
ours does), save at quality 90, one file per image. Ours is `pipeline.preprocess` on a fresh local Ray with 1 worker, then
2 (its shard phase: listing, plan, and statistics are reported apart). Both read
the same images from SOURCE, any layout `pipeline.sources` knows. Printed:
images/s per CPU core for both and their ratio at each max_short_side, the
speed-up from 1 to 2 Ray workers, and where one image's time goes.

The digits of `vggpipe demo-data` are small and simple; `--make-photo-source`
writes an ImageNet-like folder (median 500x375 crops of the two photographs
scikit-learn ships, at quality 90) for figures closer to real ImageNet.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.preprocess import ImageRejected, process_image, resize, shrunk_size
from pipeline.sources import list_images, open_source


def chosen_images(source: str, limit: int | None, seed: int = 0) -> pa.Table:
    """The listing of SOURCE, or a seeded sample of `limit` of its images."""
    table = list_images(open_source(source))
    if limit is not None and limit < table.num_rows:
        table = table.take(np.sort(np.random.default_rng(seed).permutation(table.num_rows)[:limit]))
    return table


def read_images(source: str, table: pa.Table) -> list[bytes]:
    columns = [table[name].to_pylist() for name in ("path", "offset", "size")]
    return list(open_source(source).reader().read(*columns))


@dataclass(frozen=True)
class Rates:
    wall: float  # images per second of wall-clock time (ours: the shard phase)
    cpu: float  # images per CPU-second of the process(es) doing the work
    end_to_end: float = 0.0  # ours: images per second from call to return


def naive(images: list[bytes], max_short_side: int, folder: Path) -> Rates:
    """The one-process script, timed."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for number, data in enumerate(images):
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except OSError:
            continue
        width, height = image.size
        scale = max_short_side / min(width, height)
        if scale < 1:  # like ours, never enlarge: a fairer (faster) baseline
            image = image.resize((round(width * scale), round(height * scale)))
        image.save(folder / f"{number}.jpg", quality=90)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Rates(len(images) / wall, len(images) / cpu)


def ours(source: str, max_short_side: int, workers: int, folder: Path) -> Rates:
    """pipeline.preprocess on a fresh local Ray with `workers` workers."""
    import ray

    from pipeline.preprocess import preprocess

    ray.init(
        num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    try:
        # Start each worker and import torch in it before the clock starts, as
        # on a long run where start-up is a rounding error.
        warm = ray.remote(num_cpus=1)(_warm_up)
        ray.get([warm.remote() for _ in range(workers * 2)])
        summary = preprocess(
            source,
            str(folder),
            max_short_side=max_short_side,
            shard_rows=250,
            stats_images=100,
            max_rejected_fraction=0.5,
            progress=False,
        )
    finally:
        ray.shutdown()
    return Rates(
        wall=summary.images_per_second,
        cpu=summary.images_processed / summary.worker_cpu_seconds,
        end_to_end=summary.images_processed / summary.seconds,
    )


def _warm_up() -> None:
    resize(Image.new("RGB", (64, 48)), (32, 24))
    time.sleep(0.5)


def stage_times(images: list[bytes], max_short_side: int) -> list[tuple[str, float]]:
    """CPU milliseconds per image for each step, in this process, on one thread."""
    import torch

    torch.set_num_threads(1)
    decoded = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as image:
                decoded.append(image.convert("RGB"))
        except OSError:
            continue
    targets = [
        shrunk_size(*image.size, max_short_side) or image.size for image in decoded
    ]  # same size = no resize needed

    def full_decode(data: bytes) -> None:
        Image.open(io.BytesIO(data)).load()

    def draft_decode(data: bytes) -> None:
        image = Image.open(io.BytesIO(data))
        target = shrunk_size(*image.size, max_short_side)
        if image.format == "JPEG":
            image.draft("RGB", target or image.size)
        image.load()

    def timed(step: Callable[[int], object], count: int) -> float:
        # CPU time of this one-threaded process: what the step costs, however
        # busy the machine is with other work.
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for index in range(count):
                step(index)
            best = min(best, time.process_time() - started)
        return best / count * 1e3

    valid = [data for data in images if data]
    resized = [image.resize(target) for image, target in zip(decoded, targets, strict=True)]

    def encode(index: int) -> None:
        resized[index].save(io.BytesIO(), "JPEG", quality=90)

    def ours_whole(index: int) -> None:
        # Rejected files cost what they cost.
        with contextlib.suppress(ImageRejected):
            process_image(valid[index], max_short_side, 90)

    n = len(decoded)
    return [
        ("decode, full size (naive)", timed(lambda i: full_decode(valid[i]), n)),
        ("decode, DCT-downscaled where >= 2x (ours)", timed(lambda i: draft_decode(valid[i]), n)),
        (
            "resize, Pillow bicubic (naive)",
            timed(lambda i: decoded[i].resize(targets[i]), n),
        ),
        (
            "resize, torchvision bilinear uint8 (ours)",
            timed(lambda i: resize(decoded[i], targets[i]), n),
        ),
        ("encode JPEG q90", timed(encode, n)),
        ("whole image, ours (process_image)", timed(ours_whole, n)),
    ]


def make_photo_source(folder: Path, count: int, seed: int = 0) -> None:
    """An ImageNet-like folders layout from scikit-learn's two sample photographs:
    crops whose sizes follow ImageNet's (most 500 on the long side, a few large)."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for number in range(count):
        photo = photos[number % len(photos)]
        scale = rng.choice([1.0, 1.0, 1.0, 1.3, 2.5])
        long_side = int(500 * scale)
        short_side = int(long_side * rng.choice([0.75, 0.75, 0.666, 0.8]))
        width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
        zoom = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.6)
        big = photo.resize((int(photo.width * zoom) + 1, int(photo.height * zoom) + 1))
        left = int(rng.integers(0, big.width - width + 1))
        top = int(rng.integers(0, big.height - height + 1))
        crop = big.crop((left, top, left + width, top + height))
        split = "val" if number % 5 == 0 else "train"
        wnid = f"n{number // 5 % 10:08d}"
        name = f"{wnid}_{number}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
        path = folder / split / wnid / name
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, "JPEG", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="an ILSVRC-2012 copy in any layout")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--make-photo-source", type=Path, metavar="DIR")
    parser.add_argument("--images", type=int, default=2000, help="for --make-photo-source")
    args = parser.parse_args(argv)
    if args.make_photo_source:
        make_photo_source(args.make_photo_source, args.images)
        print(f"wrote {args.images} photo crops to {args.make_photo_source}")
        return 0
    if not args.source:
        parser.error("give SOURCE, or --make-photo-source DIR")
    table = chosen_images(args.source, args.limit)
    images = read_images(args.source, table)
    sizes = []
    for data in images[:500]:
        with contextlib.suppress(OSError):
            sizes.append(Image.open(io.BytesIO(data)).size)
    long_side = statistics.median(max(size) for size in sizes)
    short_side = statistics.median(min(size) for size in sizes)
    print(
        f"source {args.source}: {len(images)} images, median sides {long_side:.0f} and "
        f"{short_side:.0f}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    breakdowns = {}
    with tempfile.TemporaryDirectory() as scratch:
        source = args.source
        if args.limit is not None:
            source = _copy_as_folders(table, images, Path(scratch) / "subset")
        for size in args.sizes:
            before = naive(images, size, _fresh(scratch, f"naive-a{size}"))
            one = ours(source, size, 1, _fresh(scratch, f"ours1-{size}"))
            two = ours(source, size, 2, _fresh(scratch, f"ours2-{size}"))
            after = naive(images, size, _fresh(scratch, f"naive-b{size}"))
            # The naive script's better run, so that load from elsewhere does not flatter us.
            best = Rates(max(before.wall, after.wall), max(before.cpu, after.cpu))
            rows.append((size, best, one, two))
            breakdowns[size] = stage_times(images[:300], size)
    print()
    print("Wall clock, images/s per CPU core (ours: the shard phase, all work on the workers)")
    print(
        "max_short_side | naive | ours, 1 worker | ratio | ours, 2 workers | speed-up 1->2 "
        "| ours end to end, 1 / 2 workers"
    )
    print("---: | ---: | ---: | ---: | ---: | ---: | ---:")
    for size, best, one, two in rows:
        print(
            f"{size} | {best.wall:.0f} | {one.wall:.0f} | {one.wall / best.wall:.2f}x | "
            f"{two.wall / 2:.0f} | {two.wall / one.wall:.2f}x | "
            f"{one.end_to_end:.0f} / {two.end_to_end:.0f}"
        )
    print()
    print("CPU time, images per CPU-second (unaffected by other programs on the machine)")
    print("max_short_side | naive | ours, 1 worker | ratio | ours, 2 workers | ratio")
    print("---: | ---: | ---: | ---: | ---: | ---:")
    for size, best, one, two in rows:
        print(
            f"{size} | {best.cpu:.0f} | {one.cpu:.0f} | {one.cpu / best.cpu:.2f}x | "
            f"{two.cpu:.0f} | {two.cpu / best.cpu:.2f}x"
        )
    for max_short_side, stages in breakdowns.items():
        print(f"\nwhere one image's time goes at max_short_side {max_short_side} (CPU ms)")
        for name, milliseconds in stages:
            print(f"  {name:<45} {milliseconds:6.2f}")
    return 0


def _fresh(scratch: str, name: str) -> Path:
    folder = Path(scratch) / name
    folder.mkdir()
    return folder


def _copy_as_folders(table: pa.Table, images: list[bytes], folder: Path) -> str:
    """The chosen images as a folders-layout source, so that ours reads what naive gets."""
    rows = zip(*(table[name].to_pylist() for name in ("split", "wnid", "key")), strict=True)
    for (split, wnid, key), data in zip(rows, images, strict=True):
        path = folder / split / (wnid or "unlabelled") / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(folder)


if __name__ == "__main__":
    sys.exit(main())
