"""Our preprocess against the script a user would write instead, on the same
images, in wall-clock time per core: what a user pays on every core they rent.

    python benchmarks/preprocess.py --source DIR [--size 256] [--limit N] [--repeats 3]
    python benchmarks/preprocess.py            # makes a photo source (benchmarks/photos.py)

The naive script runs in one process on one core: PIL open, convert to RGB,
resize the shorter side with Pillow's default filter (bicubic; only when that
shrinks, as ours does), save at quality 90, one file per image (it gets the
bytes from memory, which flatters it a little). Ours is `pipeline.preprocess`
on a local Ray with one worker per CPU, from call to return: listing, plan,
shards, colour statistics and manifest, all phases. Ray is started and its
workers warmed first, as on a long run where start-up is a rounding error.
The two take turns, `--repeats` times, so that load from elsewhere hits both:
each repeat's ratio is printed, and `main()` returns the median's figures.

Also printed: CPU time per image of each (ours: the shard tasks), where one
image's time goes, and output quality (PSNR against a float reference).
SOURCE is an ILSVRC-2012 copy in any layout `pipeline.sources` knows.
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
import simplejpeg
from PIL import Image

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.photos import describe_source, make_photo_source
from pipeline.preprocess import ImageRejected, process_image, shrunk_size
from pipeline.preprocess.image import dct_reduction, resize_array
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
    wall: float  # images per second of wall-clock time, per core
    cpu: float  # images per CPU-second of the process(es) doing the work
    phases: str = ""


def naive_image(data: bytes, max_short_side: int) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except OSError:
        return None
    width, height = image.size
    scale = max_short_side / min(width, height)
    if scale < 1:  # like ours, never enlarge: a fairer (faster) baseline
        image = image.resize((round(width * scale), round(height * scale)))
    return image


def naive(images: list[bytes], max_short_side: int, folder: Path) -> Rates:
    """The one-process script, timed."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for number, data in enumerate(images):
        image = naive_image(data, max_short_side)
        if image is not None:
            image.save(folder / f"{number}.jpg", quality=90)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Rates(len(images) / wall, len(images) / cpu)


def ours(
    source: str, images_in_source: int, max_short_side: int, workers: int, folder: Path
) -> Rates:
    """pipeline.preprocess on the Ray this process started, all phases, per core."""
    from pipeline.preprocess import preprocess

    started = time.perf_counter()
    summary = preprocess(
        source,
        str(folder),
        max_short_side=max_short_side,
        shard_rows=250,
        # The share of images the default (10,000) samples on ILSVRC's 1.28M
        stats_images=max(1, round(images_in_source * 10_000 / 1_281_167)),
        max_rejected_fraction=0.5,
        progress=False,
    )
    seconds = time.perf_counter() - started
    images = summary.images_processed + sum(1 for r in summary.rejected)
    phases = ", ".join(f"{name} {sec:.1f} s" for name, sec in summary.seconds_by_phase.items())
    return Rates(
        wall=images / seconds / workers,
        cpu=summary.images_processed / summary.worker_cpu_seconds,
        phases=f"{seconds:.1f} s: {phases}",
    )


def _warm_up() -> None:
    # Imports what the listing and shard tasks use (torch, simplejpeg, pyarrow's
    # filesystems) in the worker before the clock starts.
    import pipeline.preprocess.shard  # noqa: F401

    resize_array(np.zeros((48, 64, 3), np.uint8), (32, 24))
    simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    time.sleep(0.5)


def _timed(step: Callable[[int], object], count: int) -> float:
    # CPU time of this one-threaded process: what the step costs, however busy
    # the machine is with other work. Best of three.
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for index in range(count):
            step(index)
        best = min(best, time.process_time() - started)
    return best / count * 1e3


def stage_times(images: list[bytes], max_short_side: int) -> list[tuple[str, float]]:
    """CPU milliseconds per image for each step, in this process, on one thread,
    over the colour and greyscale JPEGs that shrink (ILSVRC's usual case)."""
    import torch

    torch.set_num_threads(1)
    jpegs, targets, decoded = [], [], []
    for data in images:
        with contextlib.suppress(ValueError, OSError):  # quirks and broken files left out
            height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
            target = shrunk_size(width, height, max_short_side)
            if colourspace in ("YCbCr", "Gray") and target is not None:
                decoded.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                jpegs.append(data)
                targets.append(target)
    if not jpegs:
        return []
    n = len(jpegs)
    pillows = [Image.fromarray(pixels) for pixels in decoded]
    resized = [resize_array(pixels, t) for pixels, t in zip(decoded, targets, strict=True)]

    def turbo_scaled(index: int, reduction_only: bool) -> None:
        height, width = decoded[index].shape[:2]
        target = targets[index]
        if reduction_only:  # ours: 1/2, 1/4, 1/8 where the shrink allows
            reduction = dct_reduction(width, height, target)
            target = (-(-width // reduction), -(-height // reduction))
        simplejpeg.decode_jpeg(jpegs[index], "RGB", min_height=target[1], min_width=target[0])

    def ours_whole(index: int) -> None:
        with contextlib.suppress(ImageRejected):
            process_image(jpegs[index], max_short_side, 90)

    def naive_whole(index: int) -> None:
        image = naive_image(jpegs[index], max_short_side)
        image.save(io.BytesIO(), "JPEG", quality=90)

    return [
        (
            f"decode, Pillow full size + RGB (naive; {n} JPEGs)",
            _timed(lambda i: Image.open(io.BytesIO(jpegs[i])).convert("RGB"), n),
        ),
        (
            "decode, TurboJPEG at the smallest M/8 >= target",
            _timed(lambda i: turbo_scaled(i, False), n),
        ),
        (
            "decode, TurboJPEG full or 1/2,1/4,1/8 (ours)",
            _timed(lambda i: turbo_scaled(i, True), n),
        ),
        ("resize, Pillow bicubic (naive)", _timed(lambda i: pillows[i].resize(targets[i]), n)),
        (
            "resize, Pillow bilinear",
            _timed(lambda i: pillows[i].resize(targets[i], Image.Resampling.BILINEAR), n),
        ),
        (
            "resize, torch bicubic uint8 (ours)",
            _timed(lambda i: resize_array(decoded[i], targets[i]), n),
        ),
        (
            "encode q90 4:2:0, Pillow (naive)",
            _timed(lambda i: Image.fromarray(resized[i]).save(io.BytesIO(), "JPEG", quality=90), n),
        ),
        (
            "encode q90 4:2:0, TurboJPEG (ours)",
            _timed(lambda i: simplejpeg.encode_jpeg(resized[i], 90, "RGB", "420"), n),
        ),
        ("whole image, naive", _timed(naive_whole, n)),
        ("whole image, ours (process_image)", _timed(ours_whole, n)),
    ]


def quality(images: list[bytes], max_short_side: int) -> dict[str, float]:
    """Mean PSNR (dB) of the stored images against a float reference: the full
    decode, Lanczos-resized in float to the same size, never re-encoded."""
    scores: dict[str, list[float]] = {"naive": [], "ours": [], "ours vs naive": []}
    for data in images:
        image = naive_image(data, max_short_side)
        if image is None or not simplejpeg.is_jpeg(data):
            continue
        with Image.open(io.BytesIO(data)) as original:
            full = original.convert("RGB")
        channels = [
            np.asarray(band.convert("F").resize(image.size, Image.Resampling.LANCZOS))
            for band in full.split()
        ]
        reference = np.clip(np.stack(channels, axis=-1), 0, 255)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        theirs = np.asarray(Image.open(buffer).convert("RGB"), np.float64)
        stored = process_image(data, max_short_side, 90).data
        mine = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"), np.float64)
        if mine.shape != theirs.shape:
            continue
        scores["naive"].append(_psnr(theirs, reference))
        scores["ours"].append(_psnr(mine, reference))
        scores["ours vs naive"].append(_psnr(mine, theirs))
    return {name: float(np.mean(values)) for name, values in scores.items() if values}


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    error = np.mean((image - reference) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-10)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("positional_source", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--source", help="an ILSVRC-2012 copy in any layout (default: photos)")
    parser.add_argument("--size", type=int, default=256, help="max_short_side (default 256)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--repeats", type=int, default=3, help="naive/ours turns (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--images", type=int, default=4000, help="photo source size")
    args = parser.parse_args(argv)
    source = args.source or args.positional_source
    import ray

    with tempfile.TemporaryDirectory() as scratch:
        if source is None:
            source = str(Path(scratch) / "photos")
            make_photo_source(Path(source), args.images)
        table = chosen_images(source, args.limit)
        images = read_images(source, table)
        sizes = []
        for data in images[:500]:
            with contextlib.suppress(OSError):
                sizes.append(Image.open(io.BytesIO(data)).size)
        long_side = statistics.median(max(size) for size in sizes)
        short_side = statistics.median(min(size) for size in sizes)
        print(
            f"source {source}: {len(images)} images, median sides {long_side:.0f} and "
            f"{short_side:.0f}: {describe_source(source)}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        if args.limit is not None:
            source = _copy_as_folders(table, images, Path(scratch) / "subset")
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(
                num_cpus=args.workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            warm = ray.remote(num_cpus=1)(_warm_up)
            ray.get([warm.remote() for _ in range(args.workers * 2)])
            runs = []
            for repeat in range(args.repeats):
                before = naive(images, args.size, _fresh(scratch, f"naive-{repeat}"))
                mine = ours(
                    source, len(images), args.size, args.workers, _fresh(scratch, f"ours-{repeat}")
                )
                runs.append((before, mine))
        finally:
            if started_ray:
                ray.shutdown()
    print()
    print(
        f"Wall clock, images/s per core at max_short_side {args.size}, all phases "
        f"(naive: 1 process; ours: {args.workers} Ray workers, call to return)"
    )
    print("repeat | naive | ours | wall ratio | naive CPU | ours CPU | cpu ratio | ours: phases")
    print("---: | ---: | ---: | ---: | ---: | ---: | ---: | ---")
    for repeat, (before, mine) in enumerate(runs):
        print(
            f"{repeat} | {before.wall:.0f} | {mine.wall:.0f} | {mine.wall / before.wall:.2f}x | "
            f"{before.cpu:.0f} | {mine.cpu:.0f} | {mine.cpu / before.cpu:.2f}x | {mine.phases}"
        )
    ratios = [mine.wall / before.wall for before, mine in runs]
    middle = runs[int(np.argsort(ratios)[len(ratios) // 2])]
    results = {
        "naive per core": middle[0].wall,
        "ours per core (wall)": middle[1].wall,
        "wall ratio": middle[1].wall / middle[0].wall,
        "naive per CPU-second": middle[0].cpu,
        "ours per CPU-second (shard tasks)": middle[1].cpu,
    }
    print(
        f"median repeat: naive {results['naive per core']:.0f}, ours "
        f"{results['ours per core (wall)']:.0f} images/s per core: "
        f"wall ratio {results['wall ratio']:.2f}x"
    )
    sample = images[:300]
    print(f"\nwhere one image's time goes at max_short_side {args.size} (CPU ms, one thread)")
    for name, milliseconds in stage_times(sample, args.size):
        print(f"  {name:<50} {milliseconds:6.2f}")
    scores = quality(sample[:100], args.size)
    print(
        "\nquality, mean PSNR against the full decode Lanczos-resized in float (dB): "
        + ", ".join(f"{name} {value:.2f}" for name, value in scores.items())
    )
    results.update({f"PSNR {name}": value for name, value in scores.items()})
    return results


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
    main()
