"""What a finished sweep leaves behind: each trial summarised from Tune and its
MLflow run, the trials tagged with their outcome, the best one's model in the
registry under the sweep's alias (the champion), the trials table (Markdown and
CSV) and a plot of error against learning rate on the parent run, and the
summary the CLI prints.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import tables, tracking
from pipeline.config import parse_train_scale, train_scale_label
from pipeline.train.config import BEST_MODEL, VAL_METRIC

if TYPE_CHECKING:
    from pipeline.tune.config import TuneConfig

SWEEP_TAG = "vggpipe.tune.sweep"
TRIAL_TAG = "vggpipe.tune.trial_id"
OUTCOME_TAG = "vggpipe.tune.outcome"
BEST_TAG = "vggpipe.tune.best"
FINISHED, STOPPED_EARLY, FAILED = "finished", "stopped early", "failed"


@dataclass
class TrialSummary:
    """One trial as the table shows it."""

    trial_id: str
    run_name: str
    run_id: str | None  # its MLflow training run (None: it failed before starting one)
    lr: float
    scale: tuple[int, int]  # (Smin, Smax)
    grid_values: dict[str, Any]  # the other grid fields' values
    val_top1_error: float  # the last epoch's; nan if it never finished one
    epochs_run: int
    outcome: str  # FINISHED, STOPPED_EARLY or FAILED

    @property
    def stopped_early(self) -> bool:
        return self.outcome == STOPPED_EARLY


@dataclass
class TuneResult:
    name: str
    parent_run_id: str
    experiment_path: str  # Tune's experiment folder (Tuner.restore takes it)
    trials: list[TrialSummary]  # best first
    best: TrialSummary | None
    model_name: str | None  # the registry entry the best model went to
    model_version: str | None
    alias: str
    table: str  # Markdown
    max_concurrent_trials: int
    tracking_uri: str


def train_run_name(sweep: str, trial_id: str) -> str:
    """The MLflow (and Ray Train) run name of one trial's training run."""
    return f"{sweep}-{trial_id}"


# ---------------------------------------------------------------------------
# Summarising the trials, the champion


def summarise_trial(config: TuneConfig, result) -> TrialSummary:
    """One Tune result as a table row; the outcome comes from its MLflow run:
    pipeline.train ends a run it completes as FINISHED, while a trial ASHA
    stops is ended from outside, with its run still RUNNING."""
    base = config.train
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    run_name = train_run_name(config.name, trial_id)
    run = tracking.find_run(run_name, base.experiment, base.tracking_uri)
    params = (result.metrics or {}).get("config") or {}
    metrics = run.data.metrics if run is not None else {}
    if result.error is not None:
        outcome = FAILED
    elif run is not None and run.info.status == "FINISHED":
        outcome = FINISHED
    else:
        outcome = STOPPED_EARLY
    scale = parse_train_scale(params["scale"]) if "scale" in params else (0, 0)
    return TrialSummary(
        trial_id=trial_id,
        run_name=run_name,
        run_id=run.info.run_id if run is not None else None,
        lr=float(params.get("lr", math.nan)),
        scale=scale,
        grid_values={k: v for k, v in params.items() if k not in ("lr", "scale")},
        val_top1_error=float(metrics.get(VAL_METRIC, math.nan)),
        epochs_run=int(metrics.get("epoch", -1)) + 1,
        outcome=outcome,
    )


def _best_first(trial: TrialSummary) -> tuple:
    error = trial.val_top1_error
    return (trial.outcome == FAILED, math.isnan(error), error, trial.trial_id)


def finish_sweep(
    config: TuneConfig, parent: tracking.Run, results, max_concurrent: int
) -> TuneResult:
    """After Tune: tag every trial's run with its outcome, register the best
    model, log the table, the CSV, the plot and the counts to the parent run."""
    trials = sorted((summarise_trial(config, result) for result in results), key=_best_first)
    finished = [t for t in trials if t.outcome == FINISHED and not math.isnan(t.val_top1_error)]
    best = finished[0] if finished else None

    for trial in trials:
        if trial.run_id is None:
            continue
        trial_run = tracking.Run(trial.run_id, parent.uri)
        trial_run.set_tags(
            {
                SWEEP_TAG: config.name,
                TRIAL_TAG: trial.trial_id,
                OUTCOME_TAG: trial.outcome,
                BEST_TAG: str(trial is best).lower(),
            }
        )
        # Tune ends a stopped or failed trial's process, so nothing closed its run,
        # or train() saw the stop as an error and closed it FAILED. Set once: a
        # sweep finished again leaves it as it was.
        status = {STOPPED_EARLY: "KILLED", FAILED: "FAILED"}.get(trial.outcome)
        if status and trial_run.get().info.status != status:
            trial_run.end(status)

    model_version = register_champion(config, parent, best)
    grid_fields = [field for field, _ in config.grid]
    table = trials_table(trials, grid_fields)
    with tempfile.TemporaryDirectory(prefix="vggpipe-tune-") as folder:
        Path(folder, "trials.md").write_text(table)
        Path(folder, "trials.csv").write_text(trials_csv(trials, grid_fields))
        plot_error_against_lr(trials, Path(folder, "error_vs_lr.png"), title=f"Sweep {config.name}")
        for name in ("trials.md", "trials.csv", "error_vs_lr.png"):
            parent.log_artifact(str(Path(folder, name)), "sweep")

    parent.log_metrics(
        {
            "trials": len(trials),
            "trials_stopped_early": sum(t.stopped_early for t in trials),
            "trials_failed": sum(t.outcome == FAILED for t in trials),
        }
        | ({"best_" + VAL_METRIC: best.val_top1_error} if best else {}),
        step=parent.next_step("trials"),  # one step per time the sweep is finished
    )
    if best is not None:
        parent.set_tags(
            {
                "vggpipe.tune.best_run_id": best.run_id,
                "vggpipe.tune.best_trial": best.trial_id,
                "vggpipe.tune.best_lr": f"{best.lr:.3g}",
                "vggpipe.tune.best_scale": train_scale_label(best.scale),
            }
        )
    return TuneResult(
        name=config.name,
        parent_run_id=parent.run_id,
        experiment_path=results.experiment_path,
        trials=trials,
        best=best,
        model_name=config.model_name if model_version else None,
        model_version=model_version,
        alias=config.alias,
        table=table,
        max_concurrent_trials=max_concurrent,
        tracking_uri=parent.uri,
    )


def register_champion(
    config: TuneConfig, parent: tracking.Run, best: TrialSummary | None
) -> str | None:
    """Register the best trial's best model and point the alias at it; a sweep
    finished again finds the version already registered and adds none."""
    if best is None or best.run_id is None:
        return None
    version = tracking.register_model(
        best.run_id,
        BEST_MODEL,
        config.model_name,
        alias=config.alias,
        tags={
            SWEEP_TAG: config.name,
            "vggpipe.tune.parent_run_id": parent.run_id,
            "lr": f"{best.lr:.3g}",
            "train_scale": train_scale_label(best.scale),
            VAL_METRIC: f"{best.val_top1_error:.4f}",
        },
        uri=parent.uri,
    ).version
    parent.set_tags(
        {
            "vggpipe.tune.registered_model": config.model_name,
            "vggpipe.tune.registered_version": version,
            "vggpipe.tune.alias": config.alias,
        }
    )
    return str(version)


# ---------------------------------------------------------------------------
# The table, the CSV and the plot


TABLE_HEADER = ["trial", "lr", "S", "val top-1 error", "epochs", "stopped early", "outcome", "run"]


def trials_table(trials: list[TrialSummary], grid_fields: list[str] = ()) -> str:
    """The trials as a Markdown table, best first: error is the last epoch's
    validation top-1 error (where ASHA stopped a trial, the epoch it stopped at)."""
    header = [*TABLE_HEADER[:3], *grid_fields, *TABLE_HEADER[3:]]
    rows = [
        [
            trial.trial_id,
            f"{trial.lr:.3g}",
            train_scale_label(trial.scale),
            *(str(trial.grid_values.get(field, "")) for field in grid_fields),
            tables.cell(None if math.isnan(trial.val_top1_error) else trial.val_top1_error, 4),
            str(trial.epochs_run),
            "yes" if trial.stopped_early else "no",
            trial.outcome,
            trial.run_id or "-",
        ]
        for trial in trials
    ]
    return tables.markdown(header, rows, numeric=("lr", "val top-1 error", "epochs"))


def trials_csv(trials: list[TrialSummary], grid_fields: list[str] = ()) -> str:
    """The trials at full precision, for analysis: nan where a trial has no error."""
    header = ["trial", "lr", "scale_min", "scale_max", *grid_fields, VAL_METRIC, "epochs_run"]
    header += ["stopped_early", "outcome", "run_id", "run_name"]
    rows = [
        [trial.trial_id, trial.lr, *trial.scale]
        + [trial.grid_values.get(field, "") for field in grid_fields]
        + [trial.val_top1_error, trial.epochs_run, trial.stopped_early, trial.outcome]
        + [trial.run_id, trial.run_name]
        for trial in trials
    ]
    return tables.csv_text(header, rows)


def plot_error_against_lr(trials: list[TrialSummary], path: Path, *, title: str = "") -> None:
    """Validation top-1 error against learning rate (log axis), one line per
    training scale (and other grid values); hollow markers: stopped early."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    def series(trial: TrialSummary) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(trial.grid_values.items()))
        return f"S = {train_scale_label(trial.scale)}" + (f", {extra}" if extra else "")

    plotted = [t for t in trials if not math.isnan(t.val_top1_error) and t.lr > 0]
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for label, group in itertools.groupby(sorted(plotted, key=series), key=series):
        group = sorted(group, key=lambda t: t.lr)
        (line,) = axes.plot(
            [t.lr for t in group], [t.val_top1_error for t in group], "-", label=label
        )
        for trial in group:
            axes.plot(
                trial.lr,
                trial.val_top1_error,
                "o",
                color=line.get_color(),
                markerfacecolor="none" if trial.stopped_early else line.get_color(),
            )
    if any(t.stopped_early for t in plotted):
        axes.plot([], [], "o", color="grey", markerfacecolor="none", label="stopped early by ASHA")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("validation top-1 error (last epoch)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if plotted:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def summary_lines(result: TuneResult) -> list[str]:
    """What `vggpipe tune` prints at the end: the table, the counts, the best
    trial, the registered champion and how to browse the runs."""
    stopped = sum(t.stopped_early for t in result.trials)
    failed = sum(t.outcome == FAILED for t in result.trials)
    lines = [
        result.table.rstrip("\n"),
        f"Sweep {result.name}: {len(result.trials)} trials, {stopped} stopped early by ASHA, "
        f"{failed} failed, at most {result.max_concurrent_trials} at a time "
        f"(MLflow parent run {result.parent_run_id}).",
    ]
    if result.best is not None:
        best = result.best
        lines.append(
            f"  best: trial {best.trial_id}, lr {best.lr:.3g}, S {train_scale_label(best.scale)}, "
            f"val top-1 error {best.val_top1_error:.4f} (run {best.run_id})"
        )
    if result.model_version is not None:
        lines.append(
            f"  registered: models:/{result.model_name}@{result.alias} "
            f"(version {result.model_version})"
        )
    lines.append(f"  Tune experiment {result.experiment_path}")
    if result.tracking_uri.startswith("sqlite:///"):
        lines.append(f"Browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    return lines


__all__ = [
    "BEST_TAG",
    "FAILED",
    "FINISHED",
    "OUTCOME_TAG",
    "STOPPED_EARLY",
    "VAL_METRIC",
    "TrialSummary",
    "TuneResult",
    "finish_sweep",
    "plot_error_against_lr",
    "register_champion",
    "summarise_trial",
    "summary_lines",
    "train_run_name",
    "trials_csv",
    "trials_table",
]
