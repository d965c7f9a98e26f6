"""A training run as it goes: rank 0's per-step metrics in MLflow, and the
driver's console progress read back from them.

MLflow is the one channel. Rank 0 logs the training metrics every
`log_every_steps` optimiser steps on the global step axis (MLflow's step), and
the epoch's validation metrics at the epoch's last step; the driver polls the
run and prints a bar (on a terminal) or a line now and then (in a pipe, a log
file or `ray job logs`). The console then shows exactly what the record holds,
and a driver that is not the one training (a workflow, a sweep) reads the same.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from math import nan
from typing import Any, TextIO

# The epoch's aggregates over every worker have their own names in MLflow: the
# plain names are the per-step series (the reported metrics keep plain names).
EPOCH_NAMES = {
    "train_loss": "epoch_train_loss",
    "images_per_second": "epoch_images_per_second",
    "data_wait_fraction": "epoch_data_wait_fraction",
}
STEP_METRIC = "train_loss"  # the per-step series whose latest step is the run's progress
LINE_SECONDS = 30.0  # in a pipe or a log file: at most one progress line this often
POLL_SECONDS = 2.0
# What an epoch's console line shows
EPOCH_LINE_KEYS = (
    "epoch",
    "epoch_train_loss",
    "val_top1_error",
    "val_top5_error",
    "epoch_images_per_second",
    "epoch_data_wait_fraction",
)


def to_mlflow_epoch_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """An epoch's reported metrics as MLflow keeps them: aggregates renamed,
    `lr` and the step left to the per-step series."""
    skip = {"lr", "global_step"}
    return {EPOCH_NAMES.get(k, k): v for k, v in metrics.items() if k not in skip}


def from_mlflow_epoch_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The reverse, for a summary read back from a finished run."""
    back = {mlflow: plain for plain, mlflow in EPOCH_NAMES.items()}
    plain = {k: v for k, v in metrics.items() if k not in back}
    plain.update({back[k]: v for k, v in metrics.items() if k in back})
    return plain


def steps_per_epoch(train_images: int, config: Any) -> int:
    """Optimiser steps in one epoch: each worker's exact share of the images
    (`ingest.epoch_assignment`), whole batches only, capped by
    max_steps_per_epoch."""
    steps = (train_images // config.num_workers) // config.batch_size_per_worker
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    return steps


class StepLog:
    """Rank 0's side: the window of steps since the last point, logged every
    `every` steps with MLflow's asynchronous logging (a slow tracking server
    never stalls a step); `wait()` at the epoch's end settles them. Steps an
    earlier attempt of the run already logged (a rerun epoch) are not logged twice."""

    def __init__(self, run, every: int, world: int) -> None:
        self.run, self.every, self.world = run, every, world
        history = run.client.get_metric_history(run.run_id, STEP_METRIC)
        self.logged = {m.step for m in history}
        self.pending: list = []
        self.start_window()

    def start_window(self) -> None:
        self.loss, self.images, self.waited, self.started = 0.0, 0, 0.0, time.perf_counter()

    def add(self, step: int, loss_sum: float, images: int, waited: float, lr: float) -> None:
        """Step `step` (global, counted from 1) is done."""
        self.loss, self.images, self.waited = (
            self.loss + loss_sum,
            self.images + images,
            self.waited + waited,
        )
        if step % self.every == 0:
            self.flush(step, lr)

    def flush(self, step: int, lr: float) -> None:
        """Log the window at `step` (also the epoch's last, partial window)."""
        if self.images and step not in self.logged:
            import mlflow.entities

            elapsed = max(time.perf_counter() - self.started, 1e-9)
            values = {
                "train_loss": self.loss / self.images,
                "lr": lr,
                "images_per_second": self.images * self.world / elapsed,
                "data_wait_fraction": self.waited / elapsed,
            }
            now = int(time.time() * 1000)
            metrics = [mlflow.entities.Metric(k, float(v), now, step) for k, v in values.items()]
            self.pending.append(
                self.run.client.log_batch(self.run.run_id, metrics=metrics, synchronous=False)
            )
            self.logged.add(step)
        self.start_window()

    def wait(self) -> None:
        for operation in self.pending:
            operation.wait()
        self.pending.clear()


def latest(run) -> dict[str, tuple[float, int]]:
    """A fetched MLflow run's latest metrics as {key: (value, step)}."""
    return {m.key: (m.value, m.step) for m in run.data.to_proto().metrics}


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_note(
    metrics: Mapping[str, tuple[float, int]],
    total_steps: int | None = None,
    *,
    epochs: int | None = None,
) -> str:
    """Where a run stands, from its latest metrics (`latest`): step, epochs
    done, loss, lr, speed and the last validation error."""
    if STEP_METRIC not in metrics:
        return ""
    loss, step = metrics[STEP_METRIC]
    parts = [f"step {step}" + (f"/{total_steps}" if total_steps else "")]
    if "epoch" in metrics:
        done = int(metrics["epoch"][0]) + 1
        parts.append(f"epochs done {done}" + (f" of at most {epochs}" if epochs else ""))
    parts.append(f"loss {loss:.4f}")
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr'][0]:.3g}")
    if "images_per_second" in metrics:
        parts.append(f"{metrics['images_per_second'][0]:.1f} img/s")
    if "val_top1_error" in metrics:
        parts.append(f"val top-1 {100 * metrics['val_top1_error'][0]:.2f}%")
    return ", ".join(parts)


class ConsoleProgress:
    """The driver's side: `poll()` reads the run and shows what is new: a tqdm
    bar of steps when `stream` is a terminal, else a progress line at most every
    LINE_SECONDS and one line per finished epoch, so a pipe, a log file and
    `ray job logs` get a readable history."""

    def __init__(
        self,
        client,
        run_id: str,
        *,
        name: str,
        epochs: int,
        steps_per_epoch: int,
        stream: TextIO | None = None,
    ) -> None:
        self.client, self.run_id, self.name = client, run_id, name
        self.epochs, self.total = epochs, epochs * steps_per_epoch
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.bar = None
        self.last_line = -float("inf")
        self.shown_step = -1
        self.shown_epoch = -1
        self.first: tuple[float, int] | None = None  # (time, step) of the first point seen
        self.failed = False

    def poll(self) -> None:
        """Never raises: a tracking server that hiccups must not stop training."""
        if self.failed:
            return
        try:
            self._show(latest(self.client.get_run(self.run_id)))
        except Exception as exc:  # noqa: BLE001 (reported once, then progress is off)
            self.failed = True
            print(f"{self.name}: progress display stopped: {exc}", file=self.stream, flush=True)

    def _eta(self, step: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, step)
            return ""
        start, first_step = self.first
        if step <= first_step:
            return ""
        rate = (step - first_step) / (now - start)
        return f", ETA {clock((self.total - step) / rate)} at most"

    def _show(self, metrics: dict[str, tuple[float, int]]) -> None:
        if STEP_METRIC in metrics and metrics[STEP_METRIC][1] != self.shown_step:
            step = metrics[STEP_METRIC][1]
            note = progress_note(metrics, self.total, epochs=self.epochs) + self._eta(step)
            self.shown_step = step
            if self.tty:
                self._bar(step, metrics)
            elif time.monotonic() - self.last_line >= LINE_SECONDS:
                self.last_line = time.monotonic()
                print(f"{self.name}: {note}", file=self.stream, flush=True)
        epoch = int(metrics["epoch"][0]) if "epoch" in metrics else -1
        if epoch > self.shown_epoch:
            for line in self._epoch_lines(self.shown_epoch + 1, epoch, metrics):
                if self.bar is not None:
                    self.bar.write(line, file=self.stream)
                else:
                    print(line, file=self.stream, flush=True)
            self.shown_epoch = epoch

    def _epoch_lines(self, first: int, last: int, metrics: dict[str, tuple[float, int]]):
        """One line per epoch from `first` to `last`; epochs that ended between
        two polls are read from the run's history."""
        by_epoch: dict[int, dict[str, float]] = {last: {k: v for k, (v, _) in metrics.items()}}
        steps = {last: metrics["epoch"][1]}
        if first < last:
            history = {
                key: {m.step: m.value for m in self.client.get_metric_history(self.run_id, key)}
                for key in EPOCH_LINE_KEYS
            }
            for step, value in history["epoch"].items():
                by_epoch[int(value)] = {
                    key: values.get(step, nan) for key, values in history.items()
                }
                steps[int(value)] = step
        for epoch in range(first, last + 1):
            if epoch in by_epoch:
                yield self._epoch_line(epoch, steps[epoch], by_epoch[epoch])

    def _epoch_line(self, epoch: int, step: int, values: Mapping[str, float]) -> str:
        def value(key: str) -> float:
            return values.get(key, nan)

        return (
            f"{self.name}: epoch {epoch + 1}/{self.epochs} (step {step}): "
            f"train loss {value('epoch_train_loss'):.4f}, "
            f"val top-1 {100 * value('val_top1_error'):.2f}% "
            f"top-5 {100 * value('val_top5_error'):.2f}%, "
            f"{value('epoch_images_per_second'):.1f} img/s, "
            f"waiting on data {100 * value('epoch_data_wait_fraction'):.0f}%"
        )

    def _bar(self, step: int, metrics: dict[str, tuple[float, int]]) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.name, unit="step", file=self.stream)
        self.bar.update(step - self.bar.n)
        postfix = {"loss": f"{metrics[STEP_METRIC][0]:.4f}"}
        if "images_per_second" in metrics:
            postfix["img/s"] = f"{metrics['images_per_second'][0]:.1f}"
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        self.poll()
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "EPOCH_NAMES",
    "POLL_SECONDS",
    "ConsoleProgress",
    "StepLog",
    "from_mlflow_epoch_metrics",
    "latest",
    "progress_note",
    "steps_per_epoch",
    "to_mlflow_epoch_metrics",
]
