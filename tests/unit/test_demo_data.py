"""The demo data: real digits as varied RGB JPEGs, deterministic, with the ImageNet quirks."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipeline.demo_data import MAX_SIDE, MIN_SIDE, demo_wnid, make_demo_data


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = make_demo_data(tmp_path / "a", per_class=5, seed=3)
    again = make_demo_data(tmp_path / "b", per_class=5, seed=3)
    other = make_demo_data(tmp_path / "c", per_class=5, seed=4)

    assert first.images == again.images
    assert [i.data for i in first.images] != [i.data for i in other.images]


def test_split_sizes_classes_and_names(tmp_path):
    demo = make_demo_data(tmp_path / "d", per_class=10)

    assert demo.wnids == [demo_wnid(d) for d in range(10)]
    assert demo.count("train") == 80
    assert demo.count("val") == 20
    train_keys = [i.key for i in demo.images if i.split == "train"]
    assert all(key.startswith(f"{key.split('_')[0]}_") for key in train_keys)
    val_keys = sorted(i.key for i in demo.images if i.split == "val")
    assert val_keys == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 21)]
    assert len({i.key for i in demo.images}) == len(demo.images)


def test_all_digits_by_default(tmp_path):
    demo = make_demo_data(tmp_path / "d", layout="tars")
    assert demo.count("train") + demo.count("val") == 1797


def test_images_are_rgb_jpegs_of_varied_sizes(tmp_path):
    demo = make_demo_data(tmp_path / "d", per_class=8)
    sizes = set()
    for image in demo.images:
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert (decoded.format, decoded.mode) == ("JPEG", "RGB")
            assert all(MIN_SIDE <= side <= MAX_SIDE for side in decoded.size)
            sizes.add(decoded.size)
    assert len(sizes) > len(demo.images) // 2
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    path = demo.root / "train" / demo.images[0].wnid / demo.images[0].key
    assert path.read_bytes() == demo.images[0].data


def test_quirks_are_the_imagenet_ones(tmp_path):
    demo = make_demo_data(tmp_path / "d", per_class=3, quirks=True)
    by_quirk = {image.quirk: image for image in demo.images if image.quirk}

    assert set(by_quirk) == {"cmyk", "grayscale", "png", "truncated", "zero-byte"}
    for quirk, (fmt, mode) in {
        "cmyk": ("JPEG", "CMYK"),
        "grayscale": ("JPEG", "L"),
        "png": ("PNG", "RGB"),
    }.items():
        image = by_quirk[quirk]
        assert image.key.endswith(".JPEG")
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert (decoded.format, decoded.mode) == (fmt, mode)
    assert by_quirk["zero-byte"].data == b""
    with (
        pytest.raises(OSError, match="truncated"),
        Image.open(io.BytesIO(by_quirk["truncated"].data)) as image,
    ):
        image.load()


def test_refuses_a_non_empty_folder_and_bad_options(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_data(tmp_path / "full")
    with pytest.raises(ValueError, match="layout must be one of folders, flat-val, tars"):
        make_demo_data(tmp_path / "a", layout="zip")
    with pytest.raises(ValueError, match="per_class"):
        make_demo_data(tmp_path / "b", per_class=1)
