"""The ingest benchmark runs end to end on a tiny photo set (figures not asserted)."""

from __future__ import annotations

import math

import pytest

from benchmarks import ingest as ingest_benchmark


@pytest.mark.extra  # a benchmark's run: make test-extra, which .ci/run runs
def test_ingest_benchmark_reports_every_ratio(tmp_path, ray_local, capsys):
    results = ingest_benchmark.main(
        ["--images", "24", "--batch", "8", "--no-ray", "--work", str(tmp_path)]
    )
    ratios = {k: v for k, v in results.items() if k.startswith("ratio")}
    assert len(ratios) == 3 and all(v > 0 and math.isfinite(v) for v in ratios.values())
    assert "decode-only bound" in capsys.readouterr().out
