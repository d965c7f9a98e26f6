"""Damaged shards are found by every reader, not only by `vggpipe verify`:
a flipped byte makes `vggpipe train` and `vggpipe evaluate` exit non-zero in
one line that names the shard and suggests `vggpipe verify`, and no figure is
logged from damaged rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import checkpoints
from pipeline.cli import main
from pipeline.errors import CorruptShardError
from pipeline.recipes import recipe
from pipeline.shard_datasource import epoch_assignment
from pipeline.shards import ShardStore
from tests.commands import one_error_line

pytestmark = pytest.mark.ray


def _damaged_copy(
    demo_shards: str, root: Path, split: str, row: tuple[str, int] | None = None
) -> tuple[str, str]:
    """A copy of the demo shards with one byte flipped inside the image of `row`
    (shard path, row), by default the first of the split's first shard;
    returns (data, the shard's path)."""
    data = root / "damaged"
    shutil.copytree(demo_shards, data)
    store = ShardStore(str(data))
    shard, index = row or (store.shards(split)[0].path, 0)
    path = data / shard
    content = bytearray(path.read_bytes())
    first_image = store.read_rows(shard, index, index + 1)["image"][0].as_py()
    offset = bytes(content).index(first_image) + len(first_image) // 2
    content[offset] ^= 0x55
    path.write_bytes(bytes(content))
    return str(data), shard


def _one_line_naming(code: int, stderr: str, shard: str, command: str) -> None:
    assert code == 2, stderr[-3000:]
    line = one_error_line(stderr, command)
    assert shard in line and "vggpipe verify" in line


def test_a_reader_names_the_shard_of_a_damaged_row_or_file(demo_shards, tmp_path):
    data, shard = _damaged_copy(demo_shards, tmp_path, "val")
    with pytest.raises(CorruptShardError, match=f"{shard}.*does not match its checksum"):
        ShardStore(data).read_rows(shard, 0, 4)
    path = Path(data) / shard
    path.write_bytes(path.read_bytes()[:-16])  # the Arrow footer cut off
    with pytest.raises(CorruptShardError, match=f"{shard} cannot be read as an Arrow shard"):
        ShardStore(data).read_shard(shard)


def test_shards_of_the_first_format_are_still_read(demo_shards, tmp_path):
    """Shards written before the checksum column: read as before, unchecked."""
    data = tmp_path / "format-1"
    shutil.copytree(demo_shards, data)
    store = ShardStore(str(data))
    shard = store.shards("val")[0].path
    with pa.ipc.open_file(data / shard) as reader:
        table = reader.read_all().drop_columns(["crc32"])
    with pa.ipc.new_file(data / shard, table.schema) as writer:
        writer.write_table(table, 256)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps(manifest | {"format_version": 1}))
    assert store.read_shard(shard).column_names == ["key", "label", "image", "height", "width"]


def test_train_and_evaluate_on_a_damaged_shard_exit_in_one_line(
    ray_local, demo_shards, new_store, tmp_path, capsys
):
    """Through `pipeline.cli.main`, what the installed command runs, on the
    session's Ray: the damaged row is met inside a Ray Data task of a Ray Train
    worker, and inside an evaluation task."""
    root, uri = new_store("damaged")
    # Training reads only the rows its steps take: damage the first row of
    # rank 0's first epoch.
    smoke = recipe("smoke", [f"data={demo_shards}"])
    first = epoch_assignment(
        ShardStore(demo_shards).shards("train"),
        seed=smoke.seed,
        epoch=0,
        world_size=smoke.num_workers,
    )[0][0]
    data, shard = _damaged_copy(demo_shards, tmp_path, "train", (first.shard, first.start))
    code = main(
        ["train", "--recipe", "smoke", "--data", data]
        + ["--set", f"storage_path={root / 'runs'}", "--set", f"tracking_uri={uri}"]
        + ["--set", "max_failures=0", "--set", "data_cpus_per_task=0.25"]
    )
    _one_line_naming(code, capsys.readouterr().err, shard, "train")

    # A net to evaluate, saved as training saves one (its figures are not the point).
    config = recipe("smoke", [f"data={demo_shards}"])
    folder = root / "net"
    folder.mkdir()
    checkpoints.save(folder, checkpoints.build_model(config, 10), config, 10, {})
    val_data, val_shard = _damaged_copy(demo_shards, tmp_path / "val", "val")
    code = main(
        ["evaluate", str(folder), "--data", val_data, "--scales", "single"]
        + ["--protocols", "centre", "--output", str(tmp_path / "tables"), "--tracking-uri", uri]
    )
    _one_line_naming(code, capsys.readouterr().err, val_shard, "evaluate")
    assert not list((tmp_path / "tables").rglob("table.csv"))  # no figure from damaged rows
