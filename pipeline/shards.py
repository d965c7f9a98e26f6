"""The prepared-dataset format, in one place: shard schema, writer, reader,
manifest, checksums and the files a run leaves while it works.

An output folder (a local path or any `pyarrow.fs` URI) holds:

    manifest.json                 the description of the finished dataset
    train/train-00000-of-01282.arrow
    ...
    val/val-00000-of-00050.arrow
    plan.arrow                    only while a run is unfinished: which image goes
                                  to which shard, so that a rerun redoes the same

Shards are Arrow IPC files (the random-access "file" format) with the columns
of `SHARD_SCHEMA`. Every file is written under a hidden temporary name in its
final folder and renamed when complete, so a crash never leaves a half file
that looks whole. Stages after preprocessing read shards through `ShardStore`
and never build paths themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import ConfigError, CorruptShardError, NotFoundError
from pipeline.manifest import (  # the manifest's types, with the store that reads them
    Manifest,
    ShardInfo,
)

SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.arrow"
SHARD_SUFFIX = ".arrow"
# Temporary files are hidden and carry this marker, so that a rerun can find and
# remove what a killed run left without touching anything else.
TEMP_MARKER = ".tmp-"
# Record batches of this many rows let a reader fetch part of a shard without
# reading all of it (the IPC file format indexes its batches).
SHARD_BATCH_ROWS = 256
# Key under which each shard's schema metadata carries its own description (the
# plan it belongs to and the images of its slot that were rejected), so that a
# rerun can account for a shard written by a run that was killed.
SHARD_METADATA_KEY = b"vggpipe"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # source file name
        pa.field("label", pa.int32(), nullable=False),  # class index, sorted-wnid order
        pa.field("image", pa.binary(), nullable=False),  # JPEG, RGB
        pa.field("height", pa.int32(), nullable=False),  # of the stored image, pixels
        pa.field("width", pa.int32(), nullable=False),
        # crc32 of the row's other fields (`row_checksum`): a reader finds a
        # flipped byte in the rows it reads, without hashing the whole file.
        pa.field("crc32", pa.uint32(), nullable=False),
    ]
)


def row_checksum(key: str, label: int, height: int, width: int, image: bytes) -> int:
    return zlib.crc32(image, zlib.crc32(f"{key}\0{label}\0{height}\0{width}".encode()))


def _row_checksums(table: pa.Table) -> list[int]:
    fields = ("key", "label", "height", "width", "image")
    return [row_checksum(*row) for row in zip(*(table[f].to_pylist() for f in fields), strict=True)]


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a `pyarrow.fs` URI
    (`s3://bucket/prefix`, `gs://...`, `file:///...`, `hdfs://...`)."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except pa.ArrowInvalid as exc:  # an unknown scheme or a malformed URI
            raise ConfigError(f"{uri!r} is not a path or a pyarrow.fs URI: {exc}") from exc
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def canonical_uri(uri: str) -> str:
    """The same location spelled one way, so that `data/x`, `/abs/data/x` and
    `file:///abs/data/x` compare equal."""
    if uri.startswith("file://"):
        return resolve_filesystem(uri)[1].rstrip("/")
    return uri.rstrip("/") if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def require_folder(uri: str, field_name: str) -> None:
    """ConfigError, before any work, when `uri` or a folder above it is a file:
    an output or storage folder (created when missing) cannot be made there."""
    filesystem, path = resolve_filesystem(uri)
    while path and path not in ("/", "."):
        kind = filesystem.get_file_info(path).type
        if kind == pafs.FileType.File:
            raise ConfigError(f"{field_name} {uri!r} cannot be a folder: {path} is a file")
        if kind == pafs.FileType.Directory:
            return
        path = path.rstrip("/").rpartition("/")[0]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_path(split: str, index: int, count: int) -> str:
    """A shard's path relative to the output root, as the manifest records it."""
    return f"{split}/{shard_name(split, index, count)}"


@dataclass(frozen=True)
class Plan:
    """Which image goes to which shard, fixed before any shard is written.

    `table` has one row per image to store, in shard order and, within a shard,
    in row order: split, shard, key, label, and where the bytes are in the
    source (path, offset, size). `info` carries what else a rerun needs.
    """

    table: pa.Table
    info: dict[str, Any]  # params, source, classes, rejections found while listing, shard counts
    plan_id: str  # sha256 of the plan file: ties shards to the plan they were written for


PLAN_SCHEMA = pa.schema(
    [
        pa.field("split", pa.dictionary(pa.int8(), pa.string())),
        pa.field("shard", pa.int32()),
        pa.field("key", pa.string()),
        pa.field("label", pa.int32()),
        pa.field("path", pa.dictionary(pa.int32(), pa.string())),
        pa.field("offset", pa.int64()),
        pa.field("size", pa.int64()),
    ]
)


class ShardStore:
    """One output folder: writes and reads its shards, manifest and plan.

    Picklable (a `pyarrow.fs` filesystem and a path), so Ray tasks take it as an
    argument and write their shards straight to the output.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, root = resolve_filesystem(uri)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"ShardStore({self.uri!r})"

    def _full(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self._full(relative)).type == pafs.FileType.File

    def write_file(self, relative: str, data: bytes | pa.Buffer) -> None:
        """Write a whole file under a temporary name, then rename it into place."""
        final = self._full(relative)
        parent, name = final.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{name}{TEMP_MARKER}{uuid.uuid4().hex}"
        with self.fs.open_output_stream(temporary, compression=None) as stream:
            stream.write(data)
        self.fs.move(temporary, final)

    def read_file(self, relative: str) -> pa.Buffer:
        with self.fs.open_input_file(self._full(relative)) as stream:
            return stream.read_buffer()

    def delete_file(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self._full(relative))

    def remove_temporary_files(self) -> list[str]:
        """Delete the temporary files that killed runs left behind; returns their paths."""
        removed = []
        for folder in ("", *SPLITS):
            selector = pafs.FileSelector(self._full(folder).rstrip("/"), allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and TEMP_MARKER in info.base_name:
                    self.fs.delete_file(info.path)
                    removed.append(info.path)
        return removed

    # Shards

    def write_shard(
        self, split: str, index: int, count: int, table: pa.Table, metadata: dict[str, Any]
    ) -> ShardInfo:
        """Write one shard: `table` has the columns of `SHARD_SCHEMA`; `metadata`
        (JSON-able) travels in the file's schema so `describe_shard` can read it back."""
        schema = SHARD_SCHEMA.with_metadata({SHARD_METADATA_KEY: json.dumps(metadata)})
        table = table.append_column("crc32", pa.array(_row_checksums(table), pa.uint32()))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(table.select(schema.names).cast(schema), SHARD_BATCH_ROWS)
        data = sink.getvalue()
        self.write_file(relative := shard_path(split, index, count), data)
        return ShardInfo(
            split, relative, table.num_rows, hashlib.sha256(data).hexdigest(), data.size
        )

    def describe_shard(self, relative: str) -> tuple[ShardInfo, dict[str, Any]]:
        """Row count, checksum and the writer's metadata of a shard on disk."""
        data = self.read_file(relative)
        reader = pa.ipc.open_file(data)
        rows = _count_rows(reader)
        metadata = json.loads((reader.schema.metadata or {}).get(SHARD_METADATA_KEY, b"{}"))
        split = relative.split("/", 1)[0]
        info = ShardInfo(split, relative, rows, hashlib.sha256(data).hexdigest(), data.size)
        return info, metadata

    def read_shard(self, shard: ShardInfo | str, columns: list[str] | None = None) -> pa.Table:
        """A shard as a table (all columns unless `columns` names some), its rows checked."""
        return self.read_rows(shard, 0, 2**62, columns)

    def read_rows(
        self, shard: ShardInfo | str, start: int, stop: int, columns: list[str] | None = None
    ) -> pa.Table:
        """Rows [start, stop) of a shard, reading only the record batches that hold
        them; CorruptShardError (naming the shard) when the file cannot be read or
        a row does not match its checksum."""
        relative = shard.path if isinstance(shard, ShardInfo) else shard
        first, last = start // SHARD_BATCH_ROWS, (max(stop, start + 1) - 1) // SHARD_BATCH_ROWS
        try:
            with self.fs.open_input_file(self._full(relative)) as stream:
                reader = pa.ipc.open_file(stream)
                last = min(last, reader.num_record_batches - 1)
                batches = [reader.get_batch(i) for i in range(first, last + 1)]
                # The writer's metadata is bookkeeping; readers get the plain schema.
                table = pa.Table.from_batches(batches, reader.schema).replace_schema_metadata(None)
        except (pa.ArrowException, OSError) as exc:
            raise self._corrupt(relative, f"cannot be read as an Arrow shard ({exc})") from exc
        table = table.slice(start - first * SHARD_BATCH_ROWS, max(stop - start, 0))
        if "crc32" in table.column_names:
            stored, keys = table["crc32"].to_pylist(), table["key"].to_pylist()
            for key, expected, found in zip(keys, stored, _row_checksums(table), strict=True):
                if expected != found:
                    raise self._corrupt(relative, f"row {key!r} does not match its checksum")
            table = table.drop_columns(["crc32"])
        return table.select(columns) if columns else table

    def _corrupt(self, relative: str, problem: str) -> CorruptShardError:
        return CorruptShardError.about(f"{self.uri.rstrip('/')}/{relative}", problem, self.uri)

    # Manifest

    def manifest(self) -> Manifest:
        """The finished dataset's manifest; FileNotFoundError when there is none."""
        if not self.exists(MANIFEST_NAME):
            raise NotFoundError(
                f"{self.uri} holds no {MANIFEST_NAME}: not a finished preprocess output"
            )
        try:
            manifest = Manifest.from_json(self.read_file(MANIFEST_NAME).to_pybytes().decode())
        except (ValueError, KeyError, TypeError) as exc:  # garbage, or fields missing
            raise ConfigError(
                f"{self.uri}/{MANIFEST_NAME} is not a valid manifest: {exc!r}"
            ) from exc
        for shard in (s for info in manifest.splits.values() for s in info.shards):
            # A path from the file is read: it must stay a shard inside this folder.
            if not re.fullmatch(rf"({'|'.join(SPLITS)})/[\w.-]+\{SHARD_SUFFIX}", shard.path):
                raise ConfigError(
                    f"{self.uri}/{MANIFEST_NAME} names a shard outside it: {shard.path!r}"
                )
        return manifest

    def has_manifest(self) -> bool:
        return self.exists(MANIFEST_NAME)

    def manifest_sha256(self) -> str:
        """The manifest file's sha256: names this exact dataset in MLflow and fingerprints."""
        return hashlib.sha256(self.read_file(MANIFEST_NAME).to_pybytes()).hexdigest()

    def write_manifest(self, manifest: Manifest) -> None:
        self.write_file(MANIFEST_NAME, manifest.to_json().encode())

    def shards(self, split: str) -> list[ShardInfo]:
        """The shards of a split, in order, as the manifest lists them."""
        splits = self.manifest().splits
        if split not in splits:
            raise ConfigError(f"no split {split!r} in {self.uri}; it has {sorted(splits)}")
        return list(splits[split].shards)

    def iter_rows(self, split: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every row of a split as a dict, shard by shard, in stored order."""
        for shard in self.shards(split):
            for batch in self.read_shard(shard, columns).to_batches():
                yield from batch.to_pylist()

    # Plan

    def has_plan(self) -> bool:
        return self.exists(PLAN_NAME)

    def write_plan(self, table: pa.Table, info: dict[str, Any]) -> Plan:
        schema = PLAN_SCHEMA.with_metadata({SHARD_METADATA_KEY: json.dumps(info)})
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_file(sink, schema, options=options) as writer:
            # One chunk, so each dictionary column has one dictionary, as IPC files require.
            writer.write_table(table.select(schema.names).combine_chunks().cast(schema))
        data = sink.getvalue()
        self.write_file(PLAN_NAME, data)
        return Plan(table, info, hashlib.sha256(data).hexdigest())

    def read_plan(self) -> Plan:
        data = self.read_file(PLAN_NAME)
        reader = pa.ipc.open_file(data)
        info = json.loads(reader.schema.metadata[SHARD_METADATA_KEY])
        table = reader.read_all().replace_schema_metadata(None)
        return Plan(table, info, hashlib.sha256(data).hexdigest())

    def delete_plan(self) -> None:
        self.delete_file(PLAN_NAME)

    # Verification

    def verify(self, progress: bool = False) -> list[str]:
        """One line per problem in the shards the manifest lists (missing,
        unreadable, wrong checksum or row count); empty when all is well."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        manifest = self.manifest()
        problems = [
            f"{split}: shard rows do not add up to the split's {info.rows}"
            for split, info in manifest.splits.items()
            if sum(shard.rows for shard in info.shards) != info.rows
        ]
        shards = [shard for info in manifest.splits.values() for shard in info.shards]
        # Reading and hashing release the GIL: a few threads keep a disk busy.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = pool.map(self._shard_problem, shards)
            disable = None if progress else True  # None: only on a terminal
            bar = tqdm(found, total=len(shards), desc="verify", unit="shard", disable=disable)
            for shard, problem in zip(shards, bar, strict=True):
                if problem:
                    problems.append(f"{shard.path}: {problem}")
        return problems

    def _shard_problem(self, shard: ShardInfo) -> str | None:
        if not self.exists(shard.path):
            return "missing"
        data = self.read_file(shard.path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != shard.sha256:
            return (
                f"checksum mismatch (sha256 {digest[:16]}..., manifest says {shard.sha256[:16]}...)"
            )
        try:
            rows = _count_rows(pa.ipc.open_file(data))
        except (pa.ArrowException, ValueError) as exc:
            return f"unreadable ({exc})"
        if rows != shard.rows:
            return f"{rows} rows, manifest says {shard.rows}"
        return None


def _count_rows(reader: pa.ipc.RecordBatchFileReader) -> int:
    return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
