"""The preprocess benchmark runs end to end on demo data and prints its table.
It checks the report's shape, never the timings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.demo_data import make_demo_data

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.extra  # minutes here: make test-extra, which .ci/run runs
def test_benchmark_reports_ours_against_naive_per_core(tmp_path):
    source = make_demo_data(tmp_path / "src", layout="tars", quirks=True, per_class=8).root
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "benchmarks/preprocess.py", str(source), "--sizes", "96"]

    result = subprocess.run(
        [*command, "--limit", "60"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"source {source}: 60 images")
    header = next(i for i, line in enumerate(lines) if line.startswith("max_short_side |"))
    assert any(line.startswith("CPU time, images per CPU-second") for line in lines)
    cells = [cell.strip() for cell in lines[header + 2].split("|")]
    assert cells[0] == "96"
    assert cells[3].endswith("x") and float(cells[3][:-1]) > 0
    assert cells[5].endswith("x")
    assert "where one image's time goes at max_short_side 96 (CPU ms)" in result.stdout
