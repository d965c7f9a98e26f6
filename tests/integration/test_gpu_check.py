"""The GPU check runs every line on the CPU at a tiny width (issue 13's
acceptance command), in its own process with its own Ray, and reports one row
per measurement. Its figures are not asserted beyond being there: timings
belong to the check's own output, not to tests on a shared machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import user_env

REPO = Path(__file__).resolve().parents[2]

MEASUREMENTS = [
    "train A, S=256, decode on cpu",
    "train A, S=256, decode on device",
    "train D from A, S=[256;512], decode on cpu",
    "train D from A, S=[256;512], decode on device",
    "dense eval A, Q=256, one image at a time",
    "dense eval A, Q=256, batches of 16",
]


def table_rows(report: str) -> dict[str, list[str]]:
    """The Markdown table's body rows, by their first cell."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: row[1:] for row in cells}


@pytest.mark.extra
def test_gpu_check_runs_every_line_on_the_cpu(tmp_path):
    report_file = tmp_path / "gpu-check.md"
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--width", "0.0625"]

    result = subprocess.run(
        [*command, "--out", str(report_file)],
        cwd=REPO,
        env=user_env(),  # RAY_TMPDIR stays: the check's Ray lives in this session's folder
        capture_output=True,
        text=True,
        timeout=420,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = report_file.read_text()
    assert report in result.stdout
    assert report.startswith("gpu_check on CPU")
    rows = table_rows(report)
    assert list(rows) == MEASUREMENTS
    for name, (rate, waiting, mfu, note) in rows.items():
        assert float(rate) > 0, (name, rate)
        assert "FAILED" not in note
        if name.startswith("train"):
            assert 0 <= float(waiting.rstrip("%")) <= 100
            assert mfu == "n/a"  # no peak is known for a CPU
    assert "posteriors agree" in rows[MEASUREMENTS[-1]][3]
