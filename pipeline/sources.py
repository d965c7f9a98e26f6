"""ILSVRC-2012 as users have it (PAPER.md section 6), read in place.

`open_source` recognises the layout of a source folder (a local path or a
`pyarrow.fs` URI) and returns a `Source`: the class index, where validation
labels come from, and the pieces of the source to list ("listing units": a
folder, or one tar). `list_unit` turns a unit into a table of images (split,
key, wnid, and where the bytes are: path, offset, size), and `SourceReader`
reads those bytes back. The tars are never extracted: tar members are stored
uncompressed, so every image, even inside the inner per-class tars of the
training tar, is a byte range of the tar file, read with one ranged read.
"""

from __future__ import annotations

import csv
import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import NotFoundError, UserError
from pipeline.shards import canonical_uri, resolve_filesystem

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META_MAT = "meta.mat"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
LOC_VAL_CSV = "LOC_val_solution.csv"
LOC_SYNSETS = "LOC_synset_mapping.txt"

LAYOUTS = {
    "folders": "train/<wnid>/*.JPEG with val/<wnid>/*.JPEG",
    "flat-val": f"train/<wnid>/*.JPEG with a flat val/*.JPEG labelled by {LOC_VAL_CSV} "
    f"or the devkit ({DEVKIT_TAR}, or {DEVKIT_DIR}/data/ with {META_MAT} and {GROUND_TRUTH})",
    "tars": f"{TRAIN_TAR} with {VAL_TAR}, labelled by {LOC_VAL_CSV} or the devkit",
}

LISTING_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string()),
        pa.field("key", pa.string()),  # the file's name, as in the source
        pa.field("wnid", pa.string()),  # "" when no label was found
        pa.field("path", pa.string()),  # relative to the source root
        pa.field("offset", pa.int64()),  # where the bytes start in that file
        pa.field("size", pa.int64()),
    ]
)

UnitKind = Literal["class-folders", "flat-folder", "class-tar", "flat-tar"]


@dataclass(frozen=True)
class ListingUnit:
    """A piece of the source that one task lists.

    class-folders: `path` holds one folder per wnid. flat-folder: `path` holds
    the images. class-tar: the inner tar of class `wnid`, stored at `offset` in
    the tar at `path`. flat-tar: the tar at `path` holds the images.
    """

    split: str
    kind: UnitKind
    path: str  # relative to the source root
    wnid: str = ""
    offset: int = 0


@dataclass
class Source:
    uri: str
    fs: pafs.FileSystem
    root: str
    layout: str  # a key of LAYOUTS
    val_labels_from: str  # "folders", LOC_VAL_CSV or "devkit"
    wnids: list[str]  # sorted: position is the class index
    names: dict[str, str]  # wnid -> human-readable name, where the source says
    units: list[ListingUnit]
    # File stem -> wnid for a flat validation set (empty for val/<wnid>/).
    val_labels: dict[str, str] = field(default_factory=dict, repr=False)

    def reader(self) -> SourceReader:
        return SourceReader(self.fs, self.root)

    def describe(self) -> dict[str, str]:
        return {
            "uri": canonical_uri(self.uri),
            "layout": self.layout,
            "val_labels": self.val_labels_from,
        }


class SourceReader:
    """Reads image bytes by (path, offset, size); small and picklable for Ray tasks."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root

    def read(self, paths: list[str], offsets: list[int], sizes: list[int]) -> Iterator[bytes]:
        """The bytes of each (path, offset, size), in the order given. Runs of the
        same path share one open file, so callers should sort by path and offset."""
        stream = None
        open_path = None
        try:
            for path, offset, size in zip(paths, offsets, sizes, strict=True):
                if path != open_path:
                    if stream is not None:
                        stream.close()
                    try:
                        stream = self.fs.open_input_file(f"{self.root}/{path}")
                    except FileNotFoundError as exc:
                        raise SourceError(
                            f"source file {self.root}/{path} is gone since the output's plan "
                            "(plan.arrow) listed it: restore it, or delete plan.arrow in the "
                            "output folder to list the source again"
                        ) from exc
                    open_path = path
                yield stream.read_at(size, offset) if size else b""
        finally:
            if stream is not None:
                stream.close()


class SourceError(UserError, ValueError):
    """The source folder is not one of the ILSVRC-2012 layouts, or is inconsistent."""


def open_source(uri: str) -> Source:
    """Recognise the layout of the ILSVRC-2012 copy at `uri`; SourceError when none matches."""
    fs, root = resolve_filesystem(uri)
    root = root.rstrip("/")
    top = fs.get_file_info(root)
    if top.type == pafs.FileType.NotFound:
        raise NotFoundError(f"source {uri} does not exist")
    if top.type != pafs.FileType.Directory:
        raise SourceError(f"source {uri} is not a folder; give the folder that holds the data")
    entries = {info.base_name: info for info in fs.get_file_info(pafs.FileSelector(root))}

    def is_dir(name: str) -> bool:
        return name in entries and entries[name].type == pafs.FileType.Directory

    def is_file(name: str) -> bool:
        return name in entries and entries[name].type == pafs.FileType.File

    devkit = _read_devkit(fs, root, entries)

    def make(
        layout: str,
        wnids: list[str],
        units: list[ListingUnit],
        labels_from: str,
        labels: dict[str, str],
    ) -> Source:
        wnids = sorted(wnids)
        names = _class_names(fs, root, entries, devkit, wnids)
        return Source(uri, fs, root, layout, labels_from, wnids, names, units, labels)

    found: list[str] = []
    if is_dir("train"):
        train_wnids = _subfolders(fs, f"{root}/train")
        if not train_wnids:
            raise SourceError(f"{uri}/train holds no class folders (train/<wnid>/*.JPEG)")
        train_units = [ListingUnit("train", "class-folders", "train")]
        if not is_dir("val"):
            found.append("train/ without val/")
        elif _subfolders(fs, f"{root}/val"):
            val_unit = ListingUnit("val", "class-folders", "val")
            return make("folders", train_wnids, [*train_units, val_unit], "folders", {})
        else:
            labels_from, labels = _val_labels(fs, root, entries, devkit)
            if labels:
                val_unit = ListingUnit("val", "flat-folder", "val")
                return make("flat-val", train_wnids, [*train_units, val_unit], labels_from, labels)
            found.append(f"train/ and a flat val/ but neither {LOC_VAL_CSV} nor the devkit")
    if is_file(TRAIN_TAR):
        labels_from, labels = _val_labels(fs, root, entries, devkit)
        if not is_file(VAL_TAR):
            found.append(f"{TRAIN_TAR} without {VAL_TAR}")
        elif not labels:
            found.append(f"the tars but neither {LOC_VAL_CSV} nor the devkit")
        else:
            class_tars = _inner_class_tars(fs, root)
            units = [ListingUnit("train", "class-tar", TRAIN_TAR, w, o) for w, o in class_tars]
            units.append(ListingUnit("val", "flat-tar", VAL_TAR))
            return make("tars", [wnid for wnid, _ in class_tars], units, labels_from, labels)
    looked_for = "; ".join(
        f"({n}) {name}: {text}" for n, (name, text) in enumerate(LAYOUTS.items(), 1)
    )
    seen = f" Found {', '.join(found)}." if found else ""
    raise SourceError(f"no ILSVRC-2012 layout in {uri}. Looked for {looked_for}.{seen}")


def _subfolders(fs: pafs.FileSystem, path: str) -> list[str]:
    return sorted(
        info.base_name
        for info in fs.get_file_info(pafs.FileSelector(path))
        if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
    )


def _inner_class_tars(fs: pafs.FileSystem, root: str) -> list[tuple[str, int]]:
    """(wnid, offset of the inner tar's bytes) for each `<wnid>.tar` in the training tar."""
    with fs.open_input_file(f"{root}/{TRAIN_TAR}") as stream, _open_tar(stream, TRAIN_TAR) as tar:
        classes = [
            (posixpath.basename(member.name)[: -len(".tar")], member.offset_data)
            for member in tar
            if member.isfile() and member.name.endswith(".tar")
        ]
    if not classes:
        raise SourceError(f"{TRAIN_TAR} holds no per-class tars (<wnid>.tar)")
    return classes


def _open_tar(stream: pa.NativeFile, name: str) -> tarfile.TarFile:
    # Plain "r:" because only an uncompressed tar has members at fixed byte
    # offsets; the official ILSVRC-2012 image tars are uncompressed.
    try:
        return tarfile.open(fileobj=stream, mode="r:")
    except tarfile.TarError as exc:
        raise SourceError(f"{name} is not an uncompressed tar ({exc})") from exc


# Validation labels and class names


def _val_labels(
    fs: pafs.FileSystem,
    root: str,
    entries: dict[str, pafs.FileInfo],
    devkit: tuple[bytes, bytes] | None,
) -> tuple[str, dict[str, str]]:
    """Where flat validation labels come from and the labels (file stem -> wnid);
    ("", {}) when the source has neither the devkit nor the Kaggle CSV."""
    if devkit is not None:
        meta, ground_truth = devkit
        wnid_of_id = {ilsvrc_id: wnid for ilsvrc_id, wnid, _ in _meta_synsets(meta)}
        labels = {}
        for number, line in enumerate(ground_truth.decode().split(), start=1):
            labels[f"ILSVRC2012_val_{number:08d}"] = wnid_of_id[int(line)]
        return "devkit", labels
    if LOC_VAL_CSV in entries:
        with fs.open_input_file(f"{root}/{LOC_VAL_CSV}") as stream:
            text = stream.read().decode()
        rows = csv.DictReader(io.StringIO(text))
        return LOC_VAL_CSV, {row["ImageId"]: row["PredictionString"].split()[0] for row in rows}
    return "", {}


def _read_devkit(
    fs: pafs.FileSystem, root: str, entries: dict[str, pafs.FileInfo]
) -> tuple[bytes, bytes] | None:
    """The devkit's meta.mat and validation ground truth, from the tarball or an
    extracted devkit folder; None when there is no devkit."""
    if DEVKIT_TAR in entries:
        with fs.open_input_file(f"{root}/{DEVKIT_TAR}") as stream:
            data = stream.read()
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in (META_MAT, GROUND_TRUTH):
                    found[name] = tar.extractfile(member).read()
        if len(found) < 2:
            raise SourceError(f"{DEVKIT_TAR} lacks data/{META_MAT} or data/{GROUND_TRUTH}")
        return found[META_MAT], found[GROUND_TRUTH]
    folder = f"{root}/{DEVKIT_DIR}/data"
    if fs.get_file_info(f"{folder}/{META_MAT}").type == pafs.FileType.File:
        with fs.open_input_file(f"{folder}/{META_MAT}") as meta:
            meta_bytes = meta.read()
        with fs.open_input_file(f"{folder}/{GROUND_TRUTH}") as truth:
            return meta_bytes, truth.read()
    return None


def _meta_synsets(meta_mat: bytes) -> list[tuple[int, str, str]]:
    """(ILSVRC2012_ID, wnid, words) for every synset of the devkit's meta.mat.

    The ids follow the devkit's own order, not the sorted wnids, so labels must
    go through the wnid and never use an id as a class index.
    """
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
    return [(int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"])) for s in synsets]


def _class_names(
    fs: pafs.FileSystem,
    root: str,
    entries: dict[str, pafs.FileInfo],
    devkit: tuple[bytes, bytes] | None,
    wnids: list[str],
) -> dict[str, str]:
    if devkit is not None:
        return {wnid: words for _, wnid, words in _meta_synsets(devkit[0]) if wnid in wnids}
    if LOC_SYNSETS in entries:
        with fs.open_input_file(f"{root}/{LOC_SYNSETS}") as stream:
            lines = stream.read().decode().splitlines()
        pairs = (line.split(" ", 1) for line in lines if line.strip())
        return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}
    if len(wnids) == 1000:
        # The 1,000 ILSVRC-2012 classes are fixed, and torchvision ships their
        # names in sorted-wnid order (the order of its ImageNet weights).
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return dict(zip(wnids, _IMAGENET_CATEGORIES, strict=True))
    return {}


# Listing


def list_unit(source: Source, unit: ListingUnit) -> pa.Table:
    """The images of one listing unit as a table of `LISTING_SCHEMA`."""
    fs, root = source.fs, source.root
    records: list[tuple[str, str, str, str, int, int]] = []

    def add(key: str, wnid: str, path: str, offset: int, size: int) -> None:
        records.append((unit.split, key, wnid, path, offset, size))

    if unit.kind == "class-folders":
        selector = pafs.FileSelector(f"{root}/{unit.path}", recursive=True)
        for info in fs.get_file_info(selector):
            relative = info.path[len(root) + 1 :]
            parts = relative.split("/")
            if info.type == pafs.FileType.File and len(parts) == 3 and _is_visible(parts):
                add(parts[2], parts[1], relative, 0, info.size)
    elif unit.kind == "flat-folder":
        for info in fs.get_file_info(pafs.FileSelector(f"{root}/{unit.path}")):
            if info.type == pafs.FileType.File and not info.base_name.startswith("."):
                wnid = source.val_labels.get(_stem(info.base_name), "")
                add(info.base_name, wnid, f"{unit.path}/{info.base_name}", 0, info.size)
    else:
        with fs.open_input_file(f"{root}/{unit.path}") as stream:
            stream.seek(unit.offset)
            # TarFile takes the stream's position as its start, so member
            # offsets come out relative to the start of the outer file.
            with _open_tar(stream, unit.path) as tar:
                for member in tar:
                    name = posixpath.basename(member.name)
                    if not member.isfile() or name.startswith("."):
                        continue
                    wnid = unit.wnid or source.val_labels.get(_stem(name), "")
                    add(name, wnid, unit.path, member.offset_data, member.size)
    columns = zip(*records, strict=True) if records else [()] * len(LISTING_SCHEMA)
    return pa.table(dict(zip(LISTING_SCHEMA.names, columns, strict=True)), schema=LISTING_SCHEMA)


def list_images(source: Source) -> pa.Table:
    """Every image of the source, listed in this process (preprocess lists in Ray tasks)."""
    return pa.concat_tables([list_unit(source, unit) for unit in source.units])


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _is_visible(parts: list[str]) -> bool:
    return not any(part.startswith(".") for part in parts)
