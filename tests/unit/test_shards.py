"""The shard format: atomic writes, reading back, manifest, plan, verify."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from pipeline.manifest import ClassEntry, ColourStatistics, Manifest, Rejection, SplitInfo
from pipeline.shards import ShardStore, canonical_uri, resolve_filesystem, shard_path


def _rows(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "key": [f"img_{i}.JPEG" for i in range(start, start + n)],
            "label": [i % 3 for i in range(n)],
            "image": [bytes([i % 256]) * (i + 1) for i in range(n)],
            "height": [10 + i for i in range(n)],
            "width": [20 + i for i in range(n)],
        }
    )


def _finished_store(root) -> ShardStore:
    store = ShardStore(str(root))
    shards = [
        store.write_shard("train", 0, 2, _rows(5), {"plan_id": "p", "rejected": []}),
        store.write_shard("train", 1, 2, _rows(4, 5), {"plan_id": "p", "rejected": []}),
    ]
    val = [store.write_shard("val", 0, 1, _rows(3, 100), {"plan_id": "p", "rejected": []})]
    store.write_manifest(
        Manifest(
            source={"uri": "/src", "layout": "folders", "val_labels": "folders"},
            params={"max_short_side": 64},
            splits={"train": SplitInfo(9, shards), "val": SplitInfo(3, val)},
            classes=[ClassEntry(0, "n0", "zero"), ClassEntry(1, "n1", ""), ClassEntry(2, "n2", "")],
            rejected=[Rejection("train", "bad.JPEG", "empty file (0 bytes)")],
            statistics=None,
        )
    )
    return store


def test_shard_round_trip_keeps_rows_and_hides_writer_metadata(tmp_path):
    store = ShardStore(str(tmp_path))
    table = _rows(600)  # more than one record batch
    info = store.write_shard("train", 3, 7, table, {"plan_id": "abc", "rejected": []})

    assert info.path == "train/train-00003-of-00007.arrow" == shard_path("train", 3, 7)
    assert info.rows == 600
    assert info.bytes == os.path.getsize(tmp_path / info.path)
    back = store.read_shard(info)
    assert back.schema.metadata is None
    assert back.to_pylist() == table.to_pylist()
    assert store.read_shard(info.path, ["key"]).column_names == ["key"]
    described, metadata = store.describe_shard(info.path)
    assert described == info
    assert metadata == {"plan_id": "abc", "rejected": []}


@pytest.mark.parametrize(("start", "stop"), [(0, 5), (250, 262), (256, 512), (500, 600), (7, 7)])
def test_read_rows_reads_a_range_across_record_batches(tmp_path, start, stop):
    store = ShardStore(str(tmp_path))
    table = _rows(600)
    info = store.write_shard("train", 0, 1, table, {})

    rows = store.read_rows(info, start, stop, ["key", "label"])

    assert rows.to_pylist() == table.select(["key", "label"]).slice(start, stop - start).to_pylist()


def test_writes_leave_no_temporary_files_and_cleanup_removes_only_them(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_shard("val", 0, 1, _rows(2), {})
    assert sorted(os.listdir(tmp_path / "val")) == ["val-00000-of-00001.arrow"]

    stale = tmp_path / "val" / ".val-00001-of-00002.arrow.tmp-0123"
    stale.write_bytes(b"half a shard")
    (tmp_path / ".manifest.json.tmp-77").write_text("{")
    removed = store.remove_temporary_files()

    assert len(removed) == 2
    assert sorted(os.listdir(tmp_path / "val")) == ["val-00000-of-00001.arrow"]
    assert os.listdir(tmp_path) == ["val"]


def test_manifest_round_trip_and_reader_api(tmp_path):
    store = _finished_store(tmp_path)

    manifest = store.manifest()
    assert manifest.splits["train"].rows == 9
    assert [shard.rows for shard in store.shards("train")] == [5, 4]
    assert manifest.classes[0] == ClassEntry(0, "n0", "zero")
    assert manifest.rejected == [Rejection("train", "bad.JPEG", "empty file (0 bytes)")]
    assert Manifest.from_json(manifest.to_json()) == manifest
    keys = [row["key"] for row in store.iter_rows("train", ["key"])]
    assert keys == [f"img_{i}.JPEG" for i in range(9)]
    with pytest.raises(ValueError, match="no split 'test'"):
        store.shards("test")


def test_manifest_with_statistics_round_trips():
    statistics = ColourStatistics(
        1, 4, "all", [1.0] * 3, [2.0] * 3, [3.0, 2.0, 1.0], [[1.0] * 3] * 3
    )
    manifest = Manifest({}, {}, {}, [], [], statistics)
    assert Manifest.from_json(manifest.to_json()).statistics == statistics


def test_manifest_of_another_format_is_refused():
    with pytest.raises(ValueError, match="not a vggpipe-shards manifest"):
        Manifest.from_json(json.dumps({"format": "other", "format_version": 1}))


def test_missing_manifest_names_the_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        ShardStore(str(tmp_path)).manifest()


def test_verify_passes_on_intact_shards(tmp_path):
    assert _finished_store(tmp_path).verify() == []


def test_verify_names_a_shard_with_one_flipped_byte(tmp_path):
    store = _finished_store(tmp_path)
    path = tmp_path / "train" / "train-00001-of-00002.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    problems = store.verify()

    assert len(problems) == 1
    assert problems[0].startswith("train/train-00001-of-00002.arrow: checksum mismatch")


def test_verify_names_missing_and_miscounted_shards(tmp_path):
    store = _finished_store(tmp_path)
    os.remove(tmp_path / "val" / "val-00000-of-00001.arrow")
    manifest = store.manifest()
    shard = manifest.splits["train"].shards[0]
    manifest.splits["train"].shards[0] = type(shard)(**{**shard.__dict__, "rows": 6})
    store.write_manifest(manifest)

    problems = store.verify()

    assert "val/val-00000-of-00001.arrow: missing" in problems
    assert "train/train-00000-of-00002.arrow: 5 rows, manifest says 6" in problems
    assert any(problem.startswith("train: shard rows do not add up") for problem in problems)


def test_plan_round_trip_with_many_chunks(tmp_path):
    store = ShardStore(str(tmp_path))
    piece = pa.table(
        {
            "split": ["train", "train"],
            "shard": pa.array([0, 1], pa.int32()),
            "key": ["a", "b"],
            "label": pa.array([0, 1], pa.int32()),
            "path": ["x.tar", "y/b.JPEG"],
            "offset": [512, 0],
            "size": [10, 20],
        }
    )
    # Tables concatenated from per-split pieces have several chunks, each of
    # which would bring its own dictionary.
    table = pa.concat_tables([piece, piece.slice(1)])
    written = store.write_plan(table, {"params": {"seed": 1}})

    read = store.read_plan()
    assert read.plan_id == written.plan_id
    assert read.info == {"params": {"seed": 1}}
    assert read.table.column("path").to_pylist() == ["x.tar", "y/b.JPEG", "y/b.JPEG"]
    store.delete_plan()
    assert not store.has_plan()


def test_paths_and_uris_resolve_to_the_same_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, relative = resolve_filesystem("data/out")
    _, uri = resolve_filesystem(f"file://{tmp_path}/data/out")
    assert relative == uri == f"{tmp_path}/data/out"
    assert canonical_uri("data/out/") == f"{tmp_path}/data/out"
    assert canonical_uri(f"file://{tmp_path}/data/out/") == f"{tmp_path}/data/out"
    assert canonical_uri("s3://bucket/x/") == "s3://bucket/x"
