"""The driver's console progress, read back from a real MLflow store."""

from __future__ import annotations

import io
import re

import pytest

from pipeline import tracking
from pipeline.recipes import recipe
from pipeline.train.progress import (
    ConsoleProgress,
    from_mlflow_epoch_metrics,
    steps_per_epoch,
    to_mlflow_epoch_metrics,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tracking.start_run("watched", "progress", uri=uri, tags={})
    # Two epochs of three steps: per-step points at 1..6, epochs at steps 3 and 6.
    for step in range(1, 7):
        run.log_metrics({"train_loss": 2.5 - step / 10, "lr": 0.01, "images_per_second": 90}, step)
    for epoch, step in ((0, 3), (1, 6)):
        reported = {
            "epoch": epoch,
            "global_step": step,
            "train_loss": 2.0 - epoch,
            "lr": 0.01,
            "images_per_second": 80.0,
            "data_wait_fraction": 0.25,
            "val_top1_error": 0.5 - epoch / 10,
            "val_top5_error": 0.1,
        }
        run.log_metrics(to_mlflow_epoch_metrics(reported), step)
    return run


def _progress(run, stream) -> ConsoleProgress:
    return ConsoleProgress(
        run.client, run.run_id, name="watched", epochs=3, steps_per_epoch=3, stream=stream
    )


def test_in_a_pipe_it_prints_the_step_and_every_epoch_once(run):
    stream = io.StringIO()
    progress = _progress(run, stream)
    progress.poll()
    progress.poll()  # nothing new: nothing printed
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("watched: step 6/9, epochs done 2 of at most 3")
    assert re.search(r"loss 1\.9000, lr 0\.01, 90\.0 img/s, val top-1 40\.00%$", lines[0])
    # The epoch that ended between two polls is read from the run's history.
    assert lines[1:] == [
        "watched: epoch 1/3 (step 3): train loss 2.0000, val top-1 50.00% top-5 10.00%, "
        "80.0 img/s, waiting on data 25%",
        "watched: epoch 2/3 (step 6): train loss 1.0000, val top-1 40.00% top-5 10.00%, "
        "80.0 img/s, waiting on data 25%",
    ]


def test_on_a_terminal_it_draws_a_bar(run):
    stream = Terminal()
    progress = _progress(run, stream)
    progress.poll()
    progress.close()
    output = stream.getvalue()
    assert re.search(r"watched:\s+67%.*6/9 .*loss=1\.9000", output), output
    assert "watched: epoch 2/3 (step 6)" in output


def test_a_tracking_error_stops_the_display_not_the_training(run):
    stream = io.StringIO()
    progress = ConsoleProgress(
        run.client, "no-such-run", name="watched", epochs=1, steps_per_epoch=1, stream=stream
    )
    progress.poll()
    progress.poll()
    assert stream.getvalue().count("progress display stopped") == 1


def test_epoch_metrics_keep_their_names_through_mlflow():
    reported = {"epoch": 1, "global_step": 8, "train_loss": 2.0, "lr": 0.1, "val_top1_error": 0.5}
    logged = to_mlflow_epoch_metrics(reported)
    assert logged == {"epoch": 1, "epoch_train_loss": 2.0, "val_top1_error": 0.5}
    assert from_mlflow_epoch_metrics({**logged, "train_loss": 1.7}) == {
        "epoch": 1,
        "train_loss": 2.0,
        "val_top1_error": 0.5,
    }


def test_steps_per_epoch_is_each_workers_share_in_whole_batches():
    demo = recipe("demo", [])  # two workers of 16 images
    assert steps_per_epoch(1438, demo) == 1438 // 2 // 16
    assert steps_per_epoch(1438, recipe("smoke", [])) == 4  # max_steps_per_epoch
