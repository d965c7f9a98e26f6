"""What a user types: demo data, preprocess, verify, through the installed
`vggpipe` command, each in its own process (preprocess starts its own Ray)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _vggpipe(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("vggpipe", path=str(Path(sys.executable).parent))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=300, env=env)


def test_demo_data_then_preprocess_then_verify(tmp_path):
    source, output = str(tmp_path / "source"), str(tmp_path / "shards")

    made = _vggpipe("demo-data", source, "--layout", "tars", "--quirks", "--per-class", "10")
    assert made.returncode == 0, made.stderr
    run = _vggpipe(
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

    checked = _vggpipe("verify", output)
    assert checked.returncode == 0, checked.stderr
    assert "all 4 shards intact (103 rows)" in checked.stdout

    again = _vggpipe("preprocess", source, output, "--max-short-side", "96", "--shard-rows", "40")
    assert again.returncode == 0
    assert "already complete with these parameters; nothing to do" in again.stdout
