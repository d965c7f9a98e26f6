"""Which image goes to which shard, fixed before any shard is written, and what
a rerun finds on the output and reuses.

Ray tasks list the source's units (a folder, the validation tar, or one inner
per-class tar of the training tar) into (split, key, wnid, path, offset, size)
rows. Per split, the keys are sorted, shuffled with the seed and cut into
shards of at most `shard_rows` rows. The plan is written to the output before
any shard, so a rerun after a crash rebuilds exactly the same shards; a rerun
reuses a manifest, a plan or a shard only when the parameters that shaped it
(`output_params`) are the ones asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError
from pipeline.manifest import Manifest, Rejection, ShardInfo
from pipeline.preprocess.config import PreprocessConfig
from pipeline.shards import SPLITS, Plan, ShardStore, canonical_uri, resolve_filesystem, shard_path
from pipeline.sources import Source, SourceError, SourceReader, list_unit


def output_params(source_uri: str, config: PreprocessConfig) -> dict[str, Any]:
    """What shapes an output: the source and the config's fingerprinted fields."""
    return {"source": canonical_uri(source_uri), **config.shaping()}


def finished_manifest(store: ShardStore, wanted: dict[str, Any]) -> Manifest | None:
    """The output's manifest when it is complete; ValueError when it was made
    with other parameters than `wanted` (`output_params`)."""
    if not store.has_manifest():
        return None
    manifest = store.manifest()
    recorded = {"source": manifest.source["uri"], **manifest.params}
    _require_same(recorded, wanted, store.uri, "already holds a dataset")
    return manifest


def unfinished_plan(store: ShardStore, wanted: dict[str, Any]) -> Plan | None:
    """The plan an interrupted run left; ValueError when it was made with other
    parameters than `wanted`."""
    if not store.has_plan():
        return None
    plan = store.read_plan()
    _require_same(plan.info["params"], wanted, store.uri, "holds an unfinished run")
    return plan


def finished_shard(
    store: ShardStore, split: str, index: int, count: int, plan_id: str
) -> tuple[ShardInfo, list[Rejection]] | None:
    """A shard an earlier run of the same plan wrote, with the images it rejected."""
    relative = shard_path(split, index, count)
    if not store.exists(relative):
        return None
    info, metadata = store.describe_shard(relative)
    if metadata.get("plan_id") != plan_id:
        return None
    return info, [Rejection(split, r["key"], r["reason"]) for r in metadata["rejected"]]


def _require_same(recorded: dict, wanted: dict, output: str, what: str) -> None:
    differences = [
        f"{name} {recorded.get(name)!r} there, {value!r} asked"
        for name, value in wanted.items()
        if recorded.get(name) != value
    ]
    if differences:
        raise ConfigError(
            f"{output} {what} made with other parameters ({'; '.join(differences)}); "
            "use another output folder, or delete this one"
        )


def list_source(source: Source, progress: bool) -> pa.Table:
    """Every image of `source` as (split, key, wnid, path, offset, size) rows, one
    Ray task per unit."""
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


def make_plan(
    store: ShardStore, source: Source, listing: pa.Table, config: PreprocessConfig
) -> Plan:
    """Label, order and cut `listing` into shards, and write the plan to `store`.
    Images without a training class are rejected here, before any decoding."""
    training_classes = pa.array(source.wnids, pa.string())
    rejected: list[Rejection] = []
    pieces = []
    images: dict[str, int] = {}
    shard_counts: dict[str, int] = {}
    # Arrow's compute kernels, not Python loops: ImageNet's 1.33 million rows
    # are planned in seconds (benchmarks/scale.py).
    # The index arithmetic runs on the key and wnid columns alone, and the
    # split's rows are gathered once, in their final order.
    for split_number, split in enumerate(SPLITS):
        in_split = pc.indices_nonzero(pc.equal(listing["split"], split))
        keys = listing["key"].take(in_split).combine_chunks()
        # Sorting first makes the order depend on the seed alone, not on the
        # order in which the filesystem or the tar listed the files.
        by_key = pc.sort_indices(keys)
        keys = keys.take(by_key)
        if len(keys) > 1:
            repeated = pc.equal(keys[1:], keys[:-1])
            duplicates = pc.unique(keys[1:].filter(repeated)).to_pylist()
            if duplicates:
                raise SourceError(
                    f"{len(duplicates)} file names occur twice in {split} "
                    f"(e.g. {', '.join(duplicates[:3])}); keys must be unique"
                )
        ordered = in_split.take(by_key)  # listing positions, sorted by key
        wnids = listing["wnid"].take(ordered)
        labels = pc.index_in(wnids, value_set=training_classes)
        unlabelled = pc.is_null(labels)
        for key, wnid in zip(
            keys.filter(unlabelled).to_pylist(), wnids.filter(unlabelled).to_pylist(), strict=True
        ):
            reason = (
                f"label {wnid} is not a training class"
                if wnid
                else f"no label in {source.val_labels_from}"
            )
            rejected.append(Rejection(split, key, reason))
        usable = pc.invert(unlabelled)
        ordered, labels = ordered.filter(usable), labels.filter(usable)
        rng = np.random.default_rng([config.seed, split_number])
        shuffled = pa.array(rng.permutation(len(ordered)))
        rows = listing.take(ordered.take(shuffled)).append_column(
            "label", labels.take(shuffled).cast(pa.int32())
        )
        count = math.ceil(rows.num_rows / config.shard_rows)
        # Even shards: the shard of row r is floor(r * count / n).
        shard = (np.arange(rows.num_rows) * count) // max(rows.num_rows, 1)
        pieces.append(rows.append_column("shard", pa.array(shard, pa.int32())))
        images[split] = rows.num_rows
        shard_counts[split] = count
    source_info = source.describe()
    info = {
        "params": output_params(source_info["uri"], config),
        "source": source_info,
        "classes": [[wnid, source.names.get(wnid, "")] for wnid in source.wnids],
        "rejected": [asdict(rejection) for rejection in rejected],
        "images": images,
        "shards": shard_counts,
    }
    return store.write_plan(pa.concat_tables(pieces), info)


def shard_slices(plan: Plan) -> Iterator[tuple[str, int, int, pa.Table]]:
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


def source_reader(plan: Plan) -> SourceReader:
    """Reads the plan's images from the source it was made from."""
    fs, root = resolve_filesystem(plan.info["source"]["uri"])
    return SourceReader(fs, root.rstrip("/"))
