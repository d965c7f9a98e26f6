"""The training curves of a run as one PNG, drawn from its MLflow metric
history: training loss, validation top-1 and top-5 error, learning rate,
each against MLflow's step (the global step when the loop logs it)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.tracking import Run

CURVES_ARTIFACT = "plots/training_curves.png"
# (panel title, y-axis label, metric keys drawn in it, log y-axis): the loss per
# logged step and, where the loop logs it, each epoch's mean.
PANELS = (
    ("training loss", "cross-entropy", ("train_loss", "epoch_train_loss"), False),
    ("validation error", "error", ("val_top1_error", "val_top5_error"), False),
    ("learning rate", "lr", ("lr",), True),
)


def draw_curves(histories: dict[str, list[tuple[int, float]]], path: Path, title: str = "") -> None:
    """`histories` (metric key -> [(step, value)]) as PANELS side by side.
    matplotlib's Figure is used without pyplot: no global backend, no display."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13.5, 3.8), dpi=100, layout="constrained")
    for axes, (panel, label, keys, log_y) in zip(
        figure.subplots(1, len(PANELS)), PANELS, strict=True
    ):
        drawn = False
        for key in keys:
            points = sorted(histories.get(key, []))
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="." if len(points) < 50 else None, label=key)
                drawn = True
        if not drawn:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
        elif log_y:
            axes.set_yscale("log")
        axes.set(title=panel, xlabel="step", ylabel=label)
        axes.grid(True, alpha=0.3)
        if drawn and len(keys) > 1:
            axes.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path)


def log_training_curves(run: Run, title: str = "") -> None:
    """Draw the run's curves from its metric history and log them as CURVES_ARTIFACT."""
    client = run.client
    histories = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)]
        for _, _, keys, _ in PANELS
        for key in keys
    }
    folder, name = CURVES_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="vggpipe-curves-") as scratch:
        path = Path(scratch) / name
        draw_curves(histories, path, title)
        run.log_artifact(str(path), folder)


__all__ = ["CURVES_ARTIFACT", "PANELS", "draw_curves", "log_training_curves"]
