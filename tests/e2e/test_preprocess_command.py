"""What a user types: demo data, preprocess, verify, through the installed
`vggpipe` command, each in its own process (preprocess starts its own Ray)."""

from __future__ import annotations

import pytest

from tests.commands import vggpipe

pytestmark = pytest.mark.slow


def test_demo_data_then_preprocess_then_verify(tmp_path):
    source, output = str(tmp_path / "source"), str(tmp_path / "shards")

    made = vggpipe("demo-data", source, "--layout", "tars", "--quirks", "--per-class", "10")
    assert made.returncode == 0, made.stderr
    run = vggpipe(
        *("preprocess", source, output, "--max-short-side", "96", "--shard-rows", "40"),
        *("--max-rejected-fraction", "0.05"),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"Prepared {output} from {source} (layout: tars)." in run.stdout
    lines = [" ".join(line.split()) for line in run.stdout.splitlines()]
    assert "train 83 images in 3 shards" in lines
    assert "val 20 images in 1 shard" in lines
    assert "rejected 2" in lines
    assert "val/ILSVRC2012_val_00000021.JPEG: cannot decode: image file is truncated" in run.stdout
    assert "images/s writing shards" in run.stdout

    checked = vggpipe("verify", output)
    assert checked.returncode == 0, checked.stderr
    assert "all 4 shards intact (103 rows)" in checked.stdout

    again = vggpipe("preprocess", source, output, "--max-short-side", "96", "--shard-rows", "40")
    assert again.returncode == 0
    assert "already complete with these parameters; nothing to do" in again.stdout
