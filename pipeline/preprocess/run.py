"""Stage 1: ILSVRC-2012, in whatever layout a user has it, into the shards and
manifest of `pipeline.shards`, as Ray tasks on every CPU of the cluster.

How a run goes:

1. Listing. `pipeline.sources` recognises the layout; Ray tasks list its units
   (a folder, the validation tar, or one inner per-class tar of the training tar)
   into (split, key, wnid, path, offset, size) rows.
2. Plan. Per split, the keys are sorted, shuffled with the seed and cut into
   shards of at most `shard_rows` rows. The plan is written to the output before
   any shard, so a rerun after a crash rebuilds exactly the same shards.
3. Shards. One Ray task per shard reads its images straight from the source (a
   ranged read per image, even inside the tars, so nothing is extracted or copied
   twice), decodes, shrinks, re-encodes, and writes the shard under a temporary
   name before renaming it. A shard already on disk from a killed run is checked
   against the plan and kept.
4. Statistics. Ray tasks sum pixel moments over a sample of the training shards
   (their first rows, which the seeded order makes a random sample).
5. Manifest, written last: its presence means the output is complete.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from pipeline.preprocess.config import PreprocessConfig
from pipeline.shards import (
    SPLITS,
    ClassEntry,
    ColourStatistics,
    Manifest,
    Plan,
    Rejection,
    ShardInfo,
    ShardStore,
    SplitInfo,
    canonical_uri,
    resolve_filesystem,
    shard_path,
)
from pipeline.sources import Source, SourceError, SourceReader, list_unit, open_source
from pipeline.stats import PixelMoments, colour_statistics, image_moments

# Shard tasks report progress every this many images: often enough for a smooth
# bar, rarely enough that the reports cost nothing next to decoding.
PROGRESS_EVERY = 16


# One image


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # RGB JPEG
    width: int
    height: int


class ImageRejected(Exception):
    """The bytes are not an image we can decode; the message is the reason."""


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
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
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


# One shard


@dataclass(frozen=True)
class ShardResult:
    info: ShardInfo
    rejected: list[Rejection]
    images_processed: int  # 0 for a shard kept from an earlier run
    written: bool
    cpu_seconds: float = 0.0  # the task's process CPU time: read, decode, encode, write


def ensure_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
) -> Iterator[int | ShardResult]:
    """Write one shard of the plan, unless an earlier run of the same plan did.

    Yields the number of images done every few images, then the ShardResult.
    `rows` is the shard's slice of the plan (key, label, path, offset, size).
    """
    relative = shard_path(split, index, count)
    if store.exists(relative):
        info, metadata = store.describe_shard(relative)
        if metadata.get("plan_id") == plan_id:
            yield rows.num_rows
            rejected = [Rejection(split, r["key"], r["reason"]) for r in metadata["rejected"]]
            yield ShardResult(info, rejected, 0, written=False)
            return
    yield from write_shard(reader, store, split, index, count, rows, config, plan_id)


def write_shard(
    reader: SourceReader,
    store: ShardStore,
    split: str,
    index: int,
    count: int,
    rows: pa.Table,
    config: PreprocessConfig,
    plan_id: str,
) -> Iterator[int | ShardResult]:
    cpu_started = time.process_time()
    keys = rows["key"].to_pylist()
    labels = rows["label"].to_pylist()
    paths = rows["path"].to_pylist()
    offsets = rows["offset"].to_pylist()
    sizes = rows["size"].to_pylist()
    # Read in file order (sequential within a tar), store in plan order.
    read_order = sorted(range(len(keys)), key=lambda i: (paths[i], offsets[i]))
    images: list[ProcessedImage | None] = [None] * len(keys)
    rejected: list[Rejection] = []
    since_report = 0
    data_in_order = reader.read(
        [paths[i] for i in read_order],
        [offsets[i] for i in read_order],
        [sizes[i] for i in read_order],
    )
    for i, data in zip(read_order, data_in_order, strict=True):
        try:
            images[i] = process_image(data, config.max_short_side, config.jpeg_quality)
        except ImageRejected as exc:
            rejected.append(Rejection(split, keys[i], str(exc)))
        since_report += 1
        if since_report == PROGRESS_EVERY:
            yield since_report
            since_report = 0
    kept = [i for i, image in enumerate(images) if image is not None]
    table = pa.table(
        {
            "key": [keys[i] for i in kept],
            "label": [labels[i] for i in kept],
            "image": [images[i].data for i in kept],
            "height": [images[i].height for i in kept],
            "width": [images[i].width for i in kept],
        }
    )
    rejected.sort(key=lambda r: r.key)
    metadata = {
        "plan_id": plan_id,
        "rejected": [{"key": r.key, "reason": r.reason} for r in rejected],
    }
    info = store.write_shard(split, index, count, table, metadata)
    if since_report:
        yield since_report
    cpu_seconds = time.process_time() - cpu_started
    yield ShardResult(info, rejected, len(keys), written=True, cpu_seconds=cpu_seconds)


# The run


@dataclass
class PreprocessSummary:
    output: str
    source: str
    layout: str
    images: dict[str, int]  # stored, per split
    shards: dict[str, int]  # per split
    classes: int
    rejected: list[Rejection]
    bytes_total: int  # all shards of the dataset
    bytes_written: int  # by this run
    shards_written: int
    shards_reused: int  # complete shards found from an earlier, interrupted run
    images_processed: int  # decoded (and re-encoded where needed) by this run
    seconds: float
    # CPU time the shard tasks used, summed over workers: unlike wall time, it
    # does not grow when other programs share the CPUs.
    worker_cpu_seconds: float = 0.0
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    already_done: bool = False  # the output was already complete with these parameters

    @property
    def images_per_second(self) -> float:
        seconds = self.seconds_by_phase.get("shards", 0.0)
        return self.images_processed / seconds if seconds > 0 else 0.0

    def report(self) -> str:
        if self.already_done:
            head = f"{self.output} is already complete with these parameters; nothing to do."
        else:
            head = f"Prepared {self.output} from {self.source} (layout: {self.layout})."
        lines = [head]
        for split, count in self.images.items():
            lines.append(f"  {split:<8} {count:>10,} images in {_shards(self.shards[split])}")
        lines.append(f"  classes  {self.classes:>10,}")
        lines.append(f"  rejected {len(self.rejected):>10,}")
        for rejection in self.rejected[:20]:
            lines.append(f"    {rejection.split}/{rejection.key}: {rejection.reason}")
        if len(self.rejected) > 20:
            lines.append(f"    ... and {len(self.rejected) - 20} more, listed in manifest.json")
        lines.append(f"  dataset  {_megabytes(self.bytes_total)}")
        if not self.already_done:
            reused = (
                f", {self.shards_reused} kept from an earlier run" if self.shards_reused else ""
            )
            lines.append(
                f"  written  {_megabytes(self.bytes_written)} in {_shards(self.shards_written)}{reused}"
            )
            phases = ", ".join(f"{name} {sec:.1f} s" for name, sec in self.seconds_by_phase.items())
            lines.append(
                f"  speed    {self.images_per_second:,.0f} images/s writing shards "
                f"({self.images_processed:,} images); {self.seconds:.1f} s in all: {phases}"
            )
        return "\n".join(lines)


def _shards(count: int) -> str:
    return f"{count:,} shard" if count == 1 else f"{count:,} shards"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def preprocess(
    source: str,
    output: str,
    *,
    max_short_side: int = 512,
    jpeg_quality: int = 90,
    shard_rows: int = 1000,
    seed: int = 0,
    max_rejected_fraction: float = 0.01,
    stats_images: int = 10_000,
    address: str | None = None,
    progress: bool = True,
) -> PreprocessSummary:
    """Turn the ILSVRC-2012 copy at `source` into shards and a manifest at `output`.

    Both may be local paths or `pyarrow.fs` URIs. Runs as Ray tasks on the Ray
    this process is connected to, else on `address` (or RAY_ADDRESS), else on a
    new local instance. Running again with the same parameters on a finished
    output does nothing; after an interrupted run it redoes only missing shards.
    """
    config = PreprocessConfig(
        max_short_side=max_short_side,
        jpeg_quality=jpeg_quality,
        shard_rows=shard_rows,
        seed=seed,
        max_rejected_fraction=max_rejected_fraction,
        stats_images=stats_images,
    )
    return run_preprocess(source, output, config, address=address, progress=progress)


def run_preprocess(
    source_uri: str,
    output: str,
    config: PreprocessConfig,
    *,
    address: str | None = None,
    progress: bool = True,
) -> PreprocessSummary:
    started = time.perf_counter()
    store = ShardStore(output)
    wanted = {"source": canonical_uri(source_uri), **config.shaping()}
    if store.has_manifest():
        manifest = store.manifest()
        recorded = {"source": manifest.source["uri"], **manifest.params}
        _require_same(recorded, wanted, output, "already holds a dataset")
        return _summary_of(manifest, output, time.perf_counter() - started)
    if store.has_plan():
        plan = store.read_plan()
        _require_same(plan.info["params"], wanted, output, "holds an unfinished run")
        source = None
    else:
        plan = None
        source = open_source(source_uri)  # fails on a bad source before Ray starts
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address)
    try:
        # What a killed run left half-written goes first; its finished shards stay.
        store.remove_temporary_files()
        phases: dict[str, float] = {}
        phase_start = time.perf_counter()
        if plan is None:
            plan = _make_plan(store, source, _list_source(source, progress), config, wanted)
        reader = SourceReader(*_source_location(plan))
        phases["listing"] = time.perf_counter() - phase_start

        phase_start = time.perf_counter()
        results = _run_shards(reader, store, plan, config, progress)
        phases["shards"] = time.perf_counter() - phase_start

        phase_start = time.perf_counter()
        statistics = _statistics(store, results, config)
        phases["statistics"] = time.perf_counter() - phase_start

        manifest = _manifest(plan, results, statistics)
        store.write_manifest(manifest)
        store.delete_plan()
        store.remove_temporary_files()
    finally:
        if started_ray:
            ray.shutdown()
    written = [result for result in results if result.written]
    return replace(
        _summary_of(manifest, output, time.perf_counter() - started),
        already_done=False,
        seconds_by_phase=phases,
        shards_written=len(written),
        shards_reused=len(results) - len(written),
        bytes_written=sum(result.info.bytes for result in written),
        images_processed=sum(result.images_processed for result in results),
        worker_cpu_seconds=sum(result.cpu_seconds for result in results),
    )


def _require_same(recorded: dict, wanted: dict, output: str, what: str) -> None:
    differences = [
        f"{name} {recorded.get(name)!r} there, {value!r} asked"
        for name, value in wanted.items()
        if recorded.get(name) != value
    ]
    if differences:
        raise ValueError(
            f"{output} {what} made with other parameters ({'; '.join(differences)}); "
            "use another output folder, or delete this one"
        )


def _source_location(plan: Plan) -> tuple[Any, str]:
    fs, root = resolve_filesystem(plan.info["source"]["uri"])
    return fs, root.rstrip("/")


# Listing and plan


def _list_source(source: Source, progress: bool) -> pa.Table:
    import ray
    from tqdm import tqdm

    list_task = ray.remote(num_cpus=1)(list_unit)
    source_ref = ray.put(source)
    pending = [list_task.remote(source_ref, unit) for unit in source.units]
    tables = []
    with tqdm(
        total=len(pending), desc="listing", unit="part", disable=None if progress else True
    ) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            tables.extend(ray.get(ready))
            bar.update(len(ready))
    return pa.concat_tables(tables)


def _make_plan(
    store: ShardStore, source: Source, listing: pa.Table, config: PreprocessConfig, wanted: dict
) -> Plan:
    label_of = {wnid: index for index, wnid in enumerate(source.wnids)}
    rejected: list[Rejection] = []
    pieces = []
    images: dict[str, int] = {}
    shard_counts: dict[str, int] = {}
    for split_number, split in enumerate(SPLITS):
        rows = listing.filter(pc.equal(listing["split"], split))
        keys = rows["key"].to_pylist()
        duplicates = sorted(key for key, times in Counter(keys).items() if times > 1)
        if duplicates:
            raise SourceError(
                f"{len(duplicates)} file names occur twice in {split} "
                f"(e.g. {', '.join(duplicates[:3])}); keys must be unique"
            )
        labels = []
        usable = []
        for position, (key, wnid) in enumerate(zip(keys, rows["wnid"].to_pylist(), strict=True)):
            if wnid in label_of:
                labels.append(label_of[wnid])
                usable.append(position)
            elif wnid:
                rejected.append(Rejection(split, key, f"label {wnid} is not a training class"))
            else:
                reason = f"no label in {source.val_labels_from}"
                rejected.append(Rejection(split, key, reason))
        usable_rows = pa.array(usable, pa.int64())
        rows = rows.take(usable_rows).append_column("label", pa.array(labels, pa.int32()))
        # Sorting first makes the order depend on the seed alone, not on the
        # order in which the filesystem or the tar listed the files.
        rows = rows.take(pc.sort_indices(rows, [("key", "ascending")]))
        rng = np.random.default_rng([config.seed, split_number])
        rows = rows.take(rng.permutation(rows.num_rows))
        count = math.ceil(rows.num_rows / config.shard_rows)
        # Even shards: the shard of row r is floor(r * count / n).
        shard = (np.arange(rows.num_rows) * count) // max(rows.num_rows, 1)
        pieces.append(rows.append_column("shard", pa.array(shard, pa.int32())))
        images[split] = rows.num_rows
        shard_counts[split] = count
    info = {
        "params": wanted,
        "source": source.describe(),
        "classes": [[wnid, source.names.get(wnid, "")] for wnid in source.wnids],
        "rejected": [asdict(rejection) for rejection in rejected],
        "images": images,
        "shards": shard_counts,
    }
    return store.write_plan(pa.concat_tables(pieces), info)


# Shards


def _run_shards(
    reader: SourceReader,
    store: ShardStore,
    plan: Plan,
    config: PreprocessConfig,
    progress: bool,
) -> list[ShardResult]:
    import ray
    from tqdm import tqdm

    table = plan.table
    rejected = len(plan.info["rejected"])
    total_images = table.num_rows + rejected
    allowed = config.max_rejected_fraction * total_images
    if rejected > allowed:
        _raise_too_many_rejected(rejected, total_images, config, plan, [])
    shard_task = ray.remote(num_cpus=1)(ensure_shard)
    reader_ref, store_ref = ray.put(reader), ray.put(store)
    todo = list(_shard_slices(plan))
    todo.reverse()  # popped from the end, so shards start in order
    pending: list[ray.ObjectRefGenerator] = []
    results: list[ShardResult] = []
    bar = tqdm(total=table.num_rows, desc="shards", unit="img", disable=None if progress else True)
    try:
        while todo or pending:
            # A few tasks per CPU in flight: enough to keep every CPU busy (asked
            # again each time, as an autoscaling cluster grows), few enough that
            # waiting on them stays cheap with a thousand shards to go.
            window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1))) if todo else 0
            while todo and len(pending) < window:
                split, index, count, rows = todo.pop()
                pending.append(
                    shard_task.remote(
                        reader_ref, store_ref, split, index, count, rows, config, plan.plan_id
                    )
                )
            [generator], _ = ray.wait(pending, num_returns=1)
            try:
                item = ray.get(next(generator))
            except StopIteration:
                pending.remove(generator)
                continue
            if isinstance(item, int):
                bar.update(item)
                continue
            results.append(item)
            rejected += len(item.rejected)
            if rejected > allowed:
                # Start nothing more, but let the shards in flight finish: a
                # rerun reuses them. Not ray.cancel: cancelling a streaming
                # generator task as it completes trips a check in Ray 2.60's
                # task manager that ends the driver process (seen in CI:
                # "Tried to complete task that was not pending").
                todo.clear()
    finally:
        bar.close()
    if rejected > allowed:
        _raise_too_many_rejected(rejected, total_images, config, plan, results)
    results.sort(key=lambda result: result.info.path)
    return results


def _shard_slices(plan: Plan) -> Iterator[tuple[str, int, int, pa.Table]]:
    """(split, index, shard count, the shard's rows of the plan) for every shard."""
    table = plan.table
    for split in SPLITS:
        count = plan.info["shards"].get(split, 0)
        rows = table.filter(pc.equal(table["split"], split))
        # The plan is stored in shard order, so a shard's rows are contiguous.
        bounds = np.searchsorted(rows["shard"].to_numpy(), np.arange(count + 1))
        for index in range(count):
            piece = rows.slice(bounds[index], bounds[index + 1] - bounds[index])
            yield split, index, count, piece.select(["key", "label", "path", "offset", "size"])


def _raise_too_many_rejected(
    rejected: int,
    total: int,
    config: PreprocessConfig,
    plan: Plan,
    results: list[ShardResult],
) -> None:
    examples = [Rejection(**entry) for entry in plan.info["rejected"]]
    examples += [rejection for result in results for rejection in result.rejected]
    shown = "; ".join(f"{r.split}/{r.key}: {r.reason}" for r in examples[:3])
    raise ValueError(
        f"at least {rejected} of {total} source images were rejected, more than "
        f"max_rejected_fraction {config.max_rejected_fraction} allows (e.g. {shown}); "
        "the shards written so far are kept, so a rerun with a larger bound finishes the job"
    )


# Statistics and manifest


def _shard_moments(store: ShardStore, shard: ShardInfo, rows: int) -> PixelMoments:
    # Only the record batches that hold the first rows are read, not the shard.
    images = store.read_rows(shard, 0, rows, ["image"])["image"]
    return image_moments(value.as_py() for value in images)


def _statistics(
    store: ShardStore, results: list[ShardResult], config: PreprocessConfig
) -> ColourStatistics | None:
    import ray

    train = [result.info for result in results if result.info.split == "train" and result.info.rows]
    total = sum(shard.rows for shard in train)
    if total == 0:
        return None
    fraction = min(1.0, config.stats_images / total)
    moments_task = ray.remote(num_cpus=1)(_shard_moments)
    store_ref = ray.put(store)
    refs = [
        moments_task.remote(store_ref, shard, math.ceil(shard.rows * fraction)) for shard in train
    ]
    moments = sum(ray.get(refs), PixelMoments.zero())
    share = "every row" if fraction == 1 else f"the first {fraction:.2%} of the rows"
    # Rows are in seeded random order, so the first rows of a shard are a random sample.
    sample = f"{share} of every training shard (stats_images={config.stats_images})"
    return colour_statistics(moments, sample)


def _manifest(
    plan: Plan, results: list[ShardResult], statistics: ColourStatistics | None
) -> Manifest:
    from importlib.metadata import version

    splits = {}
    for split in SPLITS:
        shards = [result.info for result in results if result.info.split == split]
        splits[split] = SplitInfo(rows=sum(shard.rows for shard in shards), shards=shards)
    rejected = [Rejection(**entry) for entry in plan.info["rejected"]]
    rejected += [rejection for result in results for rejection in result.rejected]
    rejected.sort(key=lambda r: (r.split, r.key))
    params = dict(plan.info["params"])
    del params["source"]
    return Manifest(
        source=plan.info["source"],
        params=params,
        splits=splits,
        classes=[
            ClassEntry(index, wnid, name) for index, (wnid, name) in enumerate(plan.info["classes"])
        ],
        rejected=rejected,
        statistics=statistics,
        software={name: version(name) for name in ("vggpipe", "pillow", "pyarrow")},
    )


def _summary_of(manifest: Manifest, output: str, seconds: float) -> PreprocessSummary:
    shards = [shard for info in manifest.splits.values() for shard in info.shards]
    return PreprocessSummary(
        output=output,
        source=manifest.source["uri"],
        layout=manifest.source["layout"],
        images={split: info.rows for split, info in manifest.splits.items()},
        shards={split: len(info.shards) for split, info in manifest.splits.items()},
        classes=len(manifest.classes),
        rejected=list(manifest.rejected),
        bytes_total=sum(shard.bytes for shard in shards),
        bytes_written=0,
        shards_written=0,
        shards_reused=0,
        images_processed=0,
        seconds=seconds,
        already_done=True,
    )
