"""The train-step benchmark runs end to end (its figures are not asserted: timings
belong to the benchmark's own output, not to tests on a shared machine)."""

from __future__ import annotations

import pytest

from benchmarks import train_step


@pytest.mark.extra  # a benchmark's run: make test-extra, which .ci/run runs
def test_train_step_benchmark_reports_both_models(capsys):
    rates = train_step.main(["--device", "cpu", "--batch", "1", "--steps", "1", "--warmup", "0"])
    assert set(rates) == {"ours (config D)", "torchvision vgg16"}
    assert all(rate > 0 for rate in rates.values())
    assert "ratio ours/torchvision" in capsys.readouterr().out
