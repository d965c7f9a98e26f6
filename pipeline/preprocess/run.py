"""The preprocessing run: ILSVRC-2012, in whatever layout a user has it, into
the shards and manifest of `pipeline.shards`, as Ray tasks on every CPU of the
cluster.

A run reuses what an earlier one left (`plan`), lists the source and fixes
the plan, runs one Ray task per shard (`shard`), sums pixel moments over a
sample of the training shards (their first rows, which the seeded order makes
a random sample), and writes the manifest last: its presence means the output
is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline import cluster
from pipeline.errors import ConfigError
from pipeline.lease import RunLease
from pipeline.manifest import (
    ClassEntry,
    ColourStatistics,
    Manifest,
    Rejection,
    SplitInfo,
)
from pipeline.preprocess.config import PreprocessConfig
from pipeline.preprocess.plan import (
    finished_manifest,
    list_source,
    make_plan,
    output_params,
    shard_slices,
    source_reader,
    unfinished_plan,
)
from pipeline.preprocess.shard import ShardResult, ensure_shard
from pipeline.shards import SPLITS, Plan, ShardStore, require_folder
from pipeline.sources import SourceReader, open_source
from pipeline.stats import PixelMoments, colour_statistics


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
    address: str | None = None,
    progress: bool = True,
    **options: Any,
) -> PreprocessSummary:
    """Turn the ILSVRC-2012 copy at `source` into shards and a manifest at `output`.

    `options` are `PreprocessConfig` fields (max_short_side, shard_rows, ...).
    Both paths may be local or `pyarrow.fs` URIs. Runs as Ray tasks on the Ray
    this process is connected to, else on `address` (or RAY_ADDRESS), else on a
    new local instance. Running again with the same parameters on a finished
    output does nothing; after an interrupted run it redoes only missing shards.
    """
    return run_preprocess(
        source, output, PreprocessConfig(**options), address=address, progress=progress
    )


def run_preprocess(
    source_uri: str,
    output: str,
    config: PreprocessConfig,
    *,
    address: str | None = None,
    progress: bool = True,
) -> PreprocessSummary:
    """`preprocess` with its options already built into a `PreprocessConfig`."""
    started = time.perf_counter()
    require_folder(output, "output")
    store = ShardStore(output)
    wanted = output_params(source_uri, config)
    manifest = finished_manifest(store, wanted)
    if manifest is not None:
        return _summary_of(manifest, output, time.perf_counter() - started)
    plan = unfinished_plan(store, wanted)
    # A new run opens the source now, so a bad source fails before Ray starts.
    source = open_source(source_uri) if plan is None else None
    import ray

    # One live preprocess per output: another's temporary files are never
    # taken for a killed run's below.
    lease = RunLease(output, f"preprocess output {output!r}")
    lease.acquire()
    try:
        started_ray = cluster.connect(address, log_to_driver=True)
    except BaseException:
        lease.release()
        raise
    try:
        # What a killed run left half-written goes first; its finished shards stay.
        store.remove_temporary_files()
        phases: dict[str, float] = {}
        phase_start = time.perf_counter()
        if plan is None:
            plan = make_plan(store, source, list_source(source, progress), config)
        reader = source_reader(plan)
        phases["listing"] = time.perf_counter() - phase_start

        phase_start = time.perf_counter()
        results = _run_shards(reader, store, plan, config, progress)
        statistics = _statistics(plan, results, config)
        phases["shards"] = time.perf_counter() - phase_start

        manifest = _manifest(plan, results, statistics)
        store.write_manifest(manifest)
        store.delete_plan()
        store.remove_temporary_files()
    finally:
        if started_ray:
            ray.shutdown()
        lease.release()
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
    stats_fraction = _stats_fraction(plan, config)
    shard_task = ray.remote(num_cpus=1)(ensure_shard)
    reader_ref, store_ref = ray.put(reader), ray.put(store)
    todo = list(shard_slices(plan))
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
                        reader_ref,
                        store_ref,
                        split,
                        index,
                        count,
                        rows,
                        config,
                        plan.plan_id,
                        stats_fraction if split == "train" else 0.0,
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
    raise ConfigError(
        f"at least {rejected} of {total} source images were rejected, more than "
        f"max_rejected_fraction {config.max_rejected_fraction} allows (e.g. {shown}); "
        "the shards written so far are kept, so a rerun with a larger bound finishes the job"
    )


# Statistics and manifest


def _stats_fraction(plan: Plan, config: PreprocessConfig) -> float:
    """The share of every training shard's planned rows the statistics sample."""
    planned = plan.info["images"].get("train", 0)
    return min(1.0, config.stats_images / planned) if planned else 0.0


def _statistics(
    plan: Plan, results: list[ShardResult], config: PreprocessConfig
) -> ColourStatistics | None:
    moments = sum(
        (result.moments for result in results if result.moments is not None),
        PixelMoments.zero(),
    )
    if moments.pixels == 0:
        return None
    fraction = _stats_fraction(plan, config)
    share = "every row" if fraction == 1 else f"the first {fraction:.2%} of the planned rows"
    # Rows are in seeded random order, so the first rows of a shard are a random sample.
    sample = (
        f"{share} of every training shard, rejected images left out "
        f"(stats_images={config.stats_images})"
    )
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
