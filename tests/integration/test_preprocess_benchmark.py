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
    command = [sys.executable, "benchmarks/preprocess.py", "--source", str(source), "--size", "96"]

    result = subprocess.run(
        [*command, "--limit", "60", "--repeats", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"source {source}: 60 images")
    header = next(i for i, line in enumerate(lines) if line.startswith("repeat |"))
    cells = [cell.strip() for cell in lines[header + 2].split("|")]
    assert cells[0] == "0"
    assert cells[3].endswith("x") and float(cells[3][:-1]) > 0
    assert cells[6].endswith("x") and float(cells[6][:-1]) > 0
    assert "median repeat:" in result.stdout and "wall ratio" in result.stdout
    assert "where one image's time goes at max_short_side 96 (CPU ms" in result.stdout
    assert "quality, mean PSNR" in result.stdout


@pytest.mark.extra
def test_main_returns_the_wall_figures_the_acceptance_reads(tmp_path, ray_local):
    from benchmarks import preprocess as benchmark

    source = make_demo_data(tmp_path / "src", layout="folders", per_class=4).root
    results = benchmark.main(["--source", str(source), "--size", "24", "--repeats", "1"])
    assert {"naive per core", "ours per core (wall)", "wall ratio"} <= set(results)
    assert results["wall ratio"] == pytest.approx(
        results["ours per core (wall)"] / results["naive per core"]
    )
