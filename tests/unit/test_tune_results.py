"""The sweep's results as users see them: the trials table (Markdown and CSV),
the plot of error against learning rate, and the printed summary."""

from __future__ import annotations

import csv
import io
import math

import pytest

from pipeline.tune.results import (
    FAILED,
    FINISHED,
    STOPPED_EARLY,
    TrialSummary,
    TuneResult,
    plot_error_against_lr,
    summary_lines,
    trials_csv,
    trials_table,
)


@pytest.fixture
def trials() -> list[TrialSummary]:
    return [
        TrialSummary("ab_00000", "s-ab_00000", "1" * 32, 0.01, (36, 36), {"width": 0.125}, 0.25, 3, FINISHED),
        TrialSummary("ab_00001", "s-ab_00001", "2" * 32, 1e-4, (36, 44), {"width": 0.125}, 0.61, 1, STOPPED_EARLY),
        TrialSummary("ab_00002", "s-ab_00002", None, 0.1, (36, 44), {"width": 0.25}, math.nan, 0, FAILED),
    ]  # fmt: skip


def test_table_has_one_row_per_trial_with_the_issue_columns(trials):
    table = trials_table(trials, ["width"])
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == [
        "trial", "lr", "S", "width", "val top-1 error", "epochs", "stopped early", "outcome", "run",
    ]  # fmt: skip
    assert set(lines[1]) <= set("|-:")  # Markdown's rule, numbers right-aligned
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert rows[0] == ["ab_00000", "0.01", "36", "0.125", "0.2500", "3", "no", "finished", "1" * 32]
    assert rows[1][:8] == ["ab_00001", "0.0001", "[36;44]", "0.125", "0.6100", "1", "yes", "stopped early"]  # fmt: skip
    assert rows[2][4] == "-" and rows[2][-1] == "-"  # a failed trial with no epoch and no run
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_csv_keeps_full_precision_for_analysis(trials):
    rows = list(csv.DictReader(io.StringIO(trials_csv(trials, ["width"]))))
    assert [row["trial"] for row in rows] == ["ab_00000", "ab_00001", "ab_00002"]
    assert float(rows[1]["lr"]) == 1e-4 and rows[1]["scale_max"] == "44"
    assert rows[1]["stopped_early"] == "True" and rows[1]["epochs_run"] == "1"
    assert float(rows[0]["val_top1_error"]) == 0.25 and rows[0]["width"] == "0.125"
    assert math.isnan(float(rows[2]["val_top1_error"])) and rows[2]["run_id"] == ""


def test_plot_is_a_png_with_a_line_per_scale(trials, tmp_path):
    import matplotlib.image

    path = tmp_path / "error_vs_lr.png"
    plot_error_against_lr(trials, path, title="Sweep s")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 400 and height > 300
    # No plottable trial still makes a (empty) figure rather than failing the sweep.
    plot_error_against_lr(trials[2:], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_summary_names_the_best_trial_the_registered_model_and_how_to_browse(trials):
    result = TuneResult(
        name="s",
        parent_run_id="p" * 32,
        experiment_path="/runs/s",
        trials=trials,
        best=trials[0],
        model_name="s",
        model_version="2",
        alias="champion",
        table=trials_table(trials, ["width"]),
        max_concurrent_trials=2,
        tracking_uri="sqlite:////tmp/mlflow.db",
    )
    text = "\n".join(summary_lines(result))
    assert "3 trials, 1 stopped early by ASHA, 1 failed, at most 2 at a time" in text
    assert "best: trial ab_00000, lr 0.01, S 36, val top-1 error 0.2500" in text
    assert "models:/s@champion (version 2)" in text
    assert text.endswith("mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db")
