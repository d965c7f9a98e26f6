"""Every ILSVRC-2012 layout of the same demo data lists the same images, labels and bytes."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest
import scipy.io

from pipeline.demo_data import DIGIT_NAMES, demo_wnid, make_demo_data
from pipeline.sources import (
    DEVKIT_TAR,
    LOC_SYNSETS,
    SourceError,
    list_images,
    open_source,
)

LAYOUTS = [
    ("folders", None),
    ("flat-val", "loc-csv"),
    ("flat-val", "devkit"),
    ("tars", "devkit"),
    ("tars", "loc-csv"),
]


@pytest.fixture(scope="module", params=LAYOUTS, ids=lambda p: f"{p[0]}-{p[1] or 'folders'}")
def demo(request, tmp_path_factory):
    layout, val_labels = request.param
    root = tmp_path_factory.mktemp("demo") / "src"
    return make_demo_data(root, layout=layout, val_labels=val_labels, quirks=True, per_class=6)


def _read_all(source, table):
    reader = source.reader()
    columns = [table[name].to_pylist() for name in ("path", "offset", "size")]
    return list(reader.read(*columns))


def test_each_layout_lists_every_image_once_with_its_label_and_bytes(demo):
    source = open_source(str(demo.root))
    table = list_images(source)

    assert source.layout == demo.layout
    assert source.wnids == [demo_wnid(d) for d in range(10)]
    listed = {
        (split, key): (wnid, data)
        for split, key, wnid, data in zip(
            table["split"].to_pylist(),
            table["key"].to_pylist(),
            table["wnid"].to_pylist(),
            _read_all(source, table),
            strict=True,
        )
    }
    assert len(listed) == table.num_rows == len(demo.images)
    assert listed == {(i.split, i.key): (i.wnid, i.data) for i in demo.images}


def test_each_layout_names_the_classes(demo):
    source = open_source(str(demo.root))
    assert [source.names[w] for w in source.wnids] == list(DIGIT_NAMES)


def test_devkit_ids_are_not_in_sorted_wnid_order(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="flat-val", val_labels="devkit", per_class=4)
    with tarfile.open(demo.root / DEVKIT_TAR) as tar:
        meta = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    ids_in_wnid_order = [int(s["ILSVRC2012_ID"]) for s in sorted(synsets, key=lambda s: s["WNID"])]
    # Labels are right (checked above) only if the reader goes id -> wnid -> index.
    assert ids_in_wnid_order[:10] != list(range(1, 11))


def test_an_extracted_devkit_folder_labels_a_flat_val(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="flat-val", val_labels="devkit", per_class=4)
    with tarfile.open(demo.root / DEVKIT_TAR) as tar:
        tar.extractall(demo.root, filter="data")
    (demo.root / DEVKIT_TAR).unlink()

    source = open_source(str(demo.root))
    table = list_images(source)

    assert source.val_labels_from == "devkit"
    val = {
        k: w
        for s, k, w in zip(*(table[c].to_pylist() for c in ("split", "key", "wnid")), strict=True)
        if s == "val"
    }
    assert val == {i.key: i.wnid for i in demo.images if i.split == "val"}


def test_a_flat_val_image_without_a_label_is_listed_without_one(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="flat-val", per_class=3)
    shutil.copy(
        demo.root / "val" / "ILSVRC2012_val_00000001.JPEG", demo.root / "val" / "extra.JPEG"
    )

    table = list_images(open_source(str(demo.root)))

    wnid_of = dict(zip(table["key"].to_pylist(), table["wnid"].to_pylist(), strict=True))
    assert wnid_of["extra.JPEG"] == ""
    assert wnid_of["ILSVRC2012_val_00000001.JPEG"].startswith("n")


def test_names_are_empty_when_the_source_has_none(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="folders", per_class=2)
    (demo.root / LOC_SYNSETS).unlink()
    assert open_source(str(demo.root)).names == {}


def test_thousand_classes_take_their_names_from_torchvision(tmp_path):
    for split in ("train", "val"):
        for index in range(1000):
            (tmp_path / split / f"n{index:08d}").mkdir(parents=True)
    source = open_source(str(tmp_path))
    assert source.names["n00000000"] == "tench"
    assert source.names["n00000999"] == "toilet tissue"


def test_a_folder_with_no_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "train" / "n00000001").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "a.JPEG").write_bytes(b"x")

    with pytest.raises(SourceError) as caught:
        open_source(str(tmp_path))

    message = str(caught.value)
    assert "\n" not in message
    for expected in ("(1) folders", "(2) flat-val", "(3) tars", "LOC_val_solution.csv", "devkit"):
        assert expected in message
    assert "Found train/ and a flat val/" in message


def test_a_missing_source_and_a_file_source_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "file.tar").write_bytes(b"")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(str(tmp_path / "file.tar"))


def test_a_compressed_training_tar_is_refused(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="tars", per_class=2)
    train_tar = demo.root / "ILSVRC2012_img_train.tar"
    with tarfile.open(tmp_path / "gz", "w:gz") as tar:
        tar.add(train_tar, arcname="x")
    shutil.move(tmp_path / "gz", train_tar)
    with pytest.raises(SourceError, match="not an uncompressed tar"):
        open_source(str(demo.root))


def test_sources_open_through_pyarrow_uris(tmp_path):
    demo = make_demo_data(tmp_path / "src", layout="tars", per_class=2)
    source = open_source(f"file://{demo.root}")
    assert list_images(source).num_rows == len(demo.images)
