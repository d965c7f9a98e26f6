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


@pytest.mark.extra
def test_ingest_benchmark_through_ray_data_splits_its_cpu_time_by_role(tmp_path, ray_local):
    results = ingest_benchmark.main(
        ["--images", "40", "--batch", "4", "--only-256", "--repeats", "1", "--epochs", "1"]
        + ["--plain-read-tasks", "--in-ray-task", "--work", str(tmp_path)]
    )
    assert results["ray data per core S=256 stored=256"] > 0
    roles = {
        role: results[f"ray data {role} CPU ms per image S=256 stored=256"]
        for role in ("consumer", "read tasks", "rest of Ray")
    }
    # On a set this small the stream may decode every epoch ahead of the timed
    # one, so only the consumer must have cost something; the roles add up to
    # the whole of Ray's CPU time per image.
    assert roles["consumer"] > 0 and min(roles.values()) >= 0, roles
    per_cpu_second = results["ray data per CPU-second S=256 stored=256"]
    assert sum(roles.values()) == pytest.approx(1e3 / per_cpu_second)
    # The decode also ran in plain Ray tasks, and the read tasks outside Ray
    # Data, their blocks dropped and stored.
    assert results["in plain Ray tasks per core S=256 stored=256"] > 0
    for how in ("dropped", "stored"):
        ratio = results[f"plain read tasks, blocks {how} / in-process S=256 stored=256"]
        assert ratio > 0 and math.isfinite(ratio)
