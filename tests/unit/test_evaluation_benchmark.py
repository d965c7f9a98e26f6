"""The bucketing benchmark runs end to end and checks that bucketed dense
posteriors equal one-at-a-time ones (its timings are not asserted)."""

from __future__ import annotations

from benchmarks import evaluate as evaluate_benchmark


def test_bucketing_benchmark_reports_both_ways(capsys):
    results = evaluate_benchmark.main(
        ["--images", "12", "--scale", "40", "--crop", "32", "--width", "0.0625"]
        + ["--batch", "4", "--repeats", "1", "--device", "cpu"]
    )
    assert results["ratio"] > 0 and results["images_per_pass"] >= 1
    out = capsys.readouterr().out
    assert "ratio bucketed/one at a time" in out and "posteriors agree" in out
