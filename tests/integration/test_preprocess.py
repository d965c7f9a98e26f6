"""Preprocess on a real local Ray: every layout of the same demo data gives the
same shards, quirks are handled, reruns do nothing, a killed driver's run
completes on rerun, and verify catches a flipped byte."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo_data import make_demo_data
from pipeline.preprocess import preprocess
from pipeline.shards import TEMP_MARKER, ShardStore

pytestmark = pytest.mark.ray

MAX_SHORT_SIDE = 128
RUN = {
    "max_short_side": MAX_SHORT_SIDE,
    "shard_rows": 24,
    # 2 rejected quirk files in ~125 images.
    "max_rejected_fraction": 0.05,
    "progress": False,
}
LAYOUTS = {
    "folders": ("folders", None),
    "flat-val-csv": ("flat-val", "loc-csv"),
    "flat-val-devkit": ("flat-val", "devkit"),
    "tars": ("tars", "devkit"),
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {
        name: make_demo_data(
            root / name, layout=layout, val_labels=labels, quirks=True, per_class=12
        )
        for name, (layout, labels) in LAYOUTS.items()
    }


@pytest.fixture(scope="module")
def outputs(ray_local, demos, tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    runs = {}
    for name, demo in demos.items():
        # One output through a pyarrow.fs URI, the rest as plain paths.
        output = f"file://{root / name}" if name == "tars" else str(root / name)
        runs[name] = (preprocess(str(demo.root), output, **RUN), ShardStore(output))
    return runs


def _shard_rows(store: ShardStore) -> dict[str, list[list[tuple]]]:
    """Per split, per shard, the stored rows in order."""
    return {
        split: [
            list(zip(*store.read_shard(shard).to_pydict().values(), strict=True))
            for shard in store.shards(split)
        ]
        for split in ("train", "val")
    }


def test_every_layout_gives_the_same_shards(outputs):
    (_, reference), *others = outputs.values()
    expected = _shard_rows(reference)
    assert len(expected["train"]) == 5 and len(expected["val"]) == 1
    for _, store in others:
        assert _shard_rows(store) == expected
        assert store.manifest().classes == reference.manifest().classes
        assert store.manifest().rejected == reference.manifest().rejected


def test_every_usable_image_is_stored_once_under_its_sorted_wnid_label(demos, outputs):
    demo = demos["flat-val-devkit"]
    summary, store = outputs["flat-val-devkit"]
    wnids = demo.wnids
    expected = {
        (image.split, image.key): wnids.index(image.wnid)
        for image in demo.images
        if image.quirk not in ("truncated", "zero-byte")
    }
    stored = [
        (split, row["key"], row["label"])
        for split in ("train", "val")
        for row in store.iter_rows(split, ["key", "label"])
    ]
    assert len(stored) == len(expected)
    assert {(split, key): label for split, key, label in stored} == expected
    assert summary.images == {"train": demo.count("train") - 1, "val": demo.count("val") - 1}
    assert [entry.wnid for entry in store.manifest().classes] == wnids
    assert store.manifest().classes[3].name == "three"


def test_quirks_are_stored_as_rgb_jpegs_or_rejected_with_reasons(demos, outputs):
    summary, store = outputs["tars"]
    quirks = demos["tars"].quirks()
    stored = {
        row["key"]: row["image"]
        for split in ("train", "val")
        for row in store.iter_rows(split, ["key", "image"])
    }
    for key in (k for k, quirk in quirks.items() if quirk in ("cmyk", "grayscale", "png")):
        with Image.open(io.BytesIO(stored[key])) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
    rejected = {r.key: r.reason for r in store.manifest().rejected}
    assert rejected == {r.key: r.reason for r in summary.rejected}
    assert set(rejected) == {
        k for k, quirk in quirks.items() if quirk in ("truncated", "zero-byte")
    }
    assert rejected["n00000003_90004.JPEG"] == "empty file (0 bytes)"
    assert "truncated" in rejected[next(k for k, q in quirks.items() if q == "truncated")]


def test_stored_images_are_shrunk_never_enlarged_and_small_ones_kept_as_they_were(demos, outputs):
    originals = {image.key: image.data for image in demos["folders"].images}
    _, store = outputs["folders"]
    kept = shrunk = 0
    for split in ("train", "val"):
        for row in store.iter_rows(split):
            with Image.open(io.BytesIO(row["image"])) as image:
                image.load()
                assert (image.format, image.mode) == ("JPEG", "RGB")
                assert image.size == (row["width"], row["height"])
            with Image.open(io.BytesIO(originals[row["key"]])) as original:
                original_size, original_mode = original.size, original.mode
            if min(original_size) <= MAX_SHORT_SIDE and original_mode == "RGB":
                assert row["image"] == originals[row["key"]]
                kept += 1
            else:
                assert min(image.size) == min(MAX_SHORT_SIDE, *original_size)
                shrunk += 1
    assert kept > 5 and shrunk > 50


def test_rows_are_in_a_seeded_random_order_across_shards(outputs):
    _, store = outputs["folders"]
    first = store.read_shard(store.shards("train")[0])
    assert len(set(first["label"].to_pylist())) >= 5
    keys = [row["key"] for row in store.iter_rows("train", ["key"])]
    assert keys != sorted(keys)


def test_manifest_holds_colour_statistics(outputs):
    statistics = outputs["folders"][1].manifest().statistics
    assert statistics.images == outputs["folders"][0].images["train"]
    assert all(0 < value < 255 for value in statistics.mean_rgb)
    assert statistics.eigenvalues == sorted(statistics.eigenvalues, reverse=True)
    assert len(statistics.eigenvectors) == 3


def test_a_rerun_with_the_same_parameters_does_nothing(demos, outputs):
    summary, store = outputs["folders"]
    root = Path(store.root)
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}

    again = preprocess(str(demos["folders"].root), str(root), **RUN)

    assert again.already_done
    assert again.images == summary.images
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before


def test_too_many_rejected_images_fail_and_a_rerun_with_a_larger_bound_finishes(
    ray_local, demos, tmp_path
):
    source = str(demos["folders"].root)
    output = str(tmp_path / "out")
    # The plan rejects the zero-byte file, which 1% of ~125 images allows; the
    # truncated JPEG, found only when its shard is decoded, is one too many, so
    # the run stops while shard tasks are in flight.
    with pytest.raises(ValueError, match="at least 2 .* max_rejected_fraction 0.01"):
        preprocess(source, output, **{**RUN, "max_rejected_fraction": 0.01})
    assert not (tmp_path / "out" / "manifest.json").exists()

    summary = preprocess(source, output, **RUN)

    assert len(summary.rejected) == 2
    # What the stopped run wrote is kept and reused.
    assert summary.shards_reused > 0
    store = ShardStore(output)
    shards = sum(len(store.shards(split)) for split in ("train", "val"))
    assert summary.shards_reused + summary.shards_written == shards
    assert store.verify() == []


def _wait_until_stable(paths: Callable[[], set[Path]], seconds: float = 1.5) -> set[Path]:
    """The set `paths()` returns once it has stopped changing for `seconds`."""
    current, since = paths(), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.1)
        latest = paths()
        if latest != current:
            current, since = latest, time.monotonic()
    return current


def test_a_driver_killed_mid_run_leaves_a_run_that_a_rerun_completes(ray_local, tmp_path):
    import ray

    demo = make_demo_data(tmp_path / "src", layout="tars", quirks=True, per_class=40)
    output = tmp_path / "out"
    command = [
        *(sys.executable, "-m", "pipeline.cli", "preprocess", str(demo.root), str(output)),
        *("--max-short-side", "64", "--shard-rows", "8", "--no-progress"),
        *("--address", ray.get_runtime_context().gcs_address),
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def shards() -> set[Path]:
        return set(output.glob("*/*.arrow"))

    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not shards() and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.wait()
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-2000:]
    # Ray ends the dead driver's tasks; wait until none is still finishing a shard.
    done_before = _wait_until_stable(shards)
    total = sum(math.ceil(demo.count(split) / 8) for split in ("train", "val"))
    assert 0 < len(done_before) < total
    assert not (output / "manifest.json").exists()
    mtimes = {path: path.stat().st_mtime_ns for path in done_before}
    # What a task killed between writing and renaming leaves behind.
    (output / "train" / f".train-00001-of-00099.arrow{TEMP_MARKER}0123abcd").write_bytes(b"half")

    summary = preprocess(
        str(demo.root), str(output), max_short_side=64, shard_rows=8, progress=False
    )

    assert summary.shards_reused == len(done_before)
    assert summary.shards_written == total - len(done_before)
    assert {path: path.stat().st_mtime_ns for path in done_before} == mtimes
    assert not [p for p in output.rglob("*") if TEMP_MARKER in p.name]
    assert sorted(p.name for p in output.iterdir()) == ["manifest.json", "train", "val"]
    store = ShardStore(str(output))
    keys = [
        (split, row["key"]) for split in ("train", "val") for row in store.iter_rows(split, ["key"])
    ]
    rejected = {(r.split, r.key) for r in store.manifest().rejected}
    assert len(keys) == len(set(keys))
    assert set(keys) | rejected == {(image.split, image.key) for image in demo.images}
    assert len(rejected) == 2


def test_verify_passes_then_fails_on_a_flipped_byte(outputs, capsys):
    _, store = outputs["flat-val-csv"]
    root = Path(store.root)
    assert main(["verify", str(root)]) == 0
    assert "all 6 shards intact" in capsys.readouterr().out

    shard = root / store.shards("val")[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))

    assert main(["verify", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "val/val-00000-of-00001.arrow: checksum mismatch" in err[0]
