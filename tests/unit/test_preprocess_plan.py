"""The plan: which image goes to which shard, from the seed alone, before any Ray work."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.demo_data import make_demo_data
from pipeline.preprocess import PreprocessConfig, make_plan
from pipeline.preprocess.plan import output_params, unfinished_plan
from pipeline.shards import ShardStore
from pipeline.sources import SourceError, list_images, open_source


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    demo = make_demo_data(tmp_path_factory.mktemp("demo") / "src", per_class=9)
    return open_source(str(demo.root))


def _plan(tmp_path, source, listing, **config):
    config = PreprocessConfig(**{"shard_rows": 10, **config})
    return make_plan(ShardStore(str(tmp_path)), source, listing, config)


def test_every_image_is_planned_once_in_balanced_shards(tmp_path, source):
    listing = list_images(source)
    plan = _plan(tmp_path, source, listing)

    table = plan.table
    assert sorted(zip(*(table[c].to_pylist() for c in ("split", "key")), strict=True)) == sorted(
        zip(*(listing[c].to_pylist() for c in ("split", "key")), strict=True)
    )
    for split, count in plan.info["shards"].items():
        rows = table.filter(pc.equal(table["split"], split))
        assert count == -(-rows.num_rows // 10)
        sizes = np.bincount(rows["shard"].to_numpy(), minlength=count)
        assert sizes.max() <= 10 and sizes.max() - sizes.min() <= 1
        assert list(rows["shard"].to_numpy()) == sorted(rows["shard"].to_numpy())
    wnids = source.wnids
    for key, label in zip(table["key"].to_pylist(), table["label"].to_pylist(), strict=True):
        if not key.startswith("ILSVRC2012_val"):
            assert wnids[label] == key.split("_")[0]


def test_the_order_depends_on_the_seed_only(tmp_path, source):
    listing = list_images(source)
    shuffled = listing.take(np.random.default_rng(5).permutation(listing.num_rows))

    first = _plan(tmp_path / "a", source, listing)
    same = _plan(tmp_path / "b", source, shuffled)
    other = _plan(tmp_path / "c", source, listing, seed=1)

    assert first.table["key"].to_pylist() == same.table["key"].to_pylist()
    assert first.plan_id == same.plan_id
    assert first.table["key"].to_pylist() != other.table["key"].to_pylist()


def test_unlabelled_and_unknown_class_images_are_rejected_while_planning(tmp_path, source):
    listing = list_images(source)
    is_val = pc.equal(listing["split"], "val").to_numpy(zero_copy_only=False)
    wnids = np.array(listing["wnid"].to_pylist(), dtype=object)
    wnids[np.flatnonzero(is_val)[0]] = ""
    wnids[is_val & (np.arange(len(wnids)) > np.flatnonzero(is_val)[0])] = "n99999999"
    listing = listing.set_column(2, "wnid", pa.array(wnids.tolist(), pa.string()))

    plan = _plan(tmp_path, source, listing)

    reasons = {entry["reason"] for entry in plan.info["rejected"]}
    assert reasons == {"no label in folders", "label n99999999 is not a training class"}
    assert len(plan.info["rejected"]) == is_val.sum()
    assert plan.info["shards"]["val"] == 0 and plan.info["images"]["val"] == 0


def test_duplicate_keys_are_refused(tmp_path, source):
    listing = list_images(source)
    with pytest.raises(SourceError, match="occur twice in train"):
        _plan(tmp_path, source, pa.concat_tables([listing, listing.slice(0, 2)]))


def test_a_rerun_reuses_the_plan_only_when_the_shaping_parameters_match(tmp_path, source):
    config = PreprocessConfig(shard_rows=10)
    store = ShardStore(str(tmp_path))
    plan = make_plan(store, source, list_images(source), config)

    # The rejection bound changes no shard, so a rerun with another one continues.
    lenient = replace(config, max_rejected_fraction=0.5)
    assert unfinished_plan(store, output_params(source.uri, lenient)).plan_id == plan.plan_id
    with pytest.raises(
        ValueError, match=r"unfinished run made .* \(shard_rows 10 there, 5 asked\)"
    ):
        unfinished_plan(store, output_params(source.uri, replace(config, shard_rows=5)))
    assert (
        unfinished_plan(ShardStore(str(tmp_path / "new")), output_params(source.uri, config))
        is None
    )
