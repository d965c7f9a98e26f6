"""The tuning stage: Ray Tune sweeps of training runs, ASHA early stopping, MLflow.

`tune(config)` runs in the driver. It opens the sweep's MLflow parent run,
builds Tune's search space (learning rates, training scales S, grids over any
other training field) and runs one Tune trial per point. Each trial is a
function trainable, `run_trial`, that calls `pipeline.train.train` for its
config: that builds and fits a `TorchTrainer` (Ray Train V2), whose reports
reach Tune through Ray's Train-to-Tune callback, so ASHA sees every epoch's
validation top-1 error and stops poor trials. The trial's training run is an
MLflow run nested under the parent. When Tune is done the driver marks each
trial (finished, stopped early, failed), tags the best one, registers its best
model in the model registry under an alias (`champion`), and logs the trials
table (Markdown and CSV) and a plot of error against learning rate per scale
to the parent run.

Files, under the base config's storage_path:

    <name>/                     Tune's experiment (tuner.pkl, experiment state)
    <name>/<trial id>/          one folder per trial (params.json, result.json)
    <name>/train/<run name>/    that trial's Ray Train run (checkpoints)

Running the same sweep name again resumes it (`Tuner.restore`): finished and
stopped trials are not run again; an interrupted trial restarts its training
run, which resumes from its latest checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.train.config import TrainConfig
    from pipeline.tune.config import TuneConfig

# `pipeline/__init__.py` binds `tune` when `pipeline` is imported, and that must
# stay light: pipeline.config (torch), pipeline.tracking (MLflow) and Ray are
# imported inside the functions that use them.

VAL_METRIC = "val_top1_error"  # what ASHA and the champion are judged on; pipeline.train reports it
EPOCHS_DONE = "epochs_done"  # ASHA's clock: epochs trained so far (1 after the first)
BEST_MODEL = "best_model"  # the artifact pipeline.train logs from a run's best checkpoint
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


# ---------------------------------------------------------------------------
# The search space and each trial's config


def search_space(config: TuneConfig) -> dict[str, Any]:
    """Tune's param_space: plain values and Tune domains only (the base config
    travels separately). Scales are strings ("36", "36:44") so that Tune's
    trial names and tables show them as written."""
    from ray import tune

    scales = config.scales or ((config.train.scale_min, config.train.scale_max),)
    scale_texts = [str(low) if low == high else f"{low}:{high}" for low, high in scales]
    # Grids expand with the last key varying fastest; lr last makes neighbouring
    # trials differ in lr, so ASHA's first rungs compare learning rates early.
    space: dict[str, Any] = {field: tune.grid_search(list(values)) for field, values in config.grid}
    space["scale"] = tune.grid_search(scale_texts)
    space["lr"] = (
        tune.grid_search(list(config.lrs)) if config.lrs else tune.loguniform(*config.lr_range)
    )
    return space


def train_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def trial_config(
    base: TrainConfig,
    params: Mapping[str, Any],
    *,
    sweep: str,
    trial_id: str,
    parent_run_id: str,
    storage_path: str,
) -> TrainConfig:
    """The training config of one trial: the base with the trial's lr, S and
    grid values, its own run name, nested under the sweep's MLflow run."""
    from pipeline.config import parse_train_scale

    scale_min, scale_max = parse_train_scale(params["scale"])
    grid_values = {key: value for key, value in params.items() if key not in ("lr", "scale")}
    return dataclasses.replace(
        base,
        lr=float(params["lr"]),
        scale_min=scale_min,
        scale_max=scale_max,
        run_name=train_run_name(sweep, trial_id),
        parent_run_id=parent_run_id,
        storage_path=storage_path,
        **grid_values,
    )


def _train_to_tune_callback():
    """Ray's Train-to-Tune callback, adding EPOCHS_DONE to each report. ASHA
    keeps its clock on that rather than Tune's training_iteration, which starts
    again at 1 when an interrupted trial resumes its training run mid-way."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [{**m, EPOCHS_DONE: int(m["epoch"]) + 1} for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return EpochsToTune()


def run_trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    sweep: str,
    parent_run_id: str,
    storage_path: str,
) -> None:
    """Tune's function trainable: train this trial's config with Ray Train,
    each epoch's report forwarded to Tune (where ASHA may stop the trial)."""
    import ray.tune

    from pipeline import tracking
    from pipeline.train.config import TrainConfig
    from pipeline.train.driver import train

    trial_id = ray.tune.get_context().get_trial_id()
    config = trial_config(
        TrainConfig.from_dict(base),
        params,
        sweep=sweep,
        trial_id=trial_id,
        parent_run_id=parent_run_id,
        storage_path=storage_path,
    )
    done = tracking.find_run(config.name, config.experiment, config.tracking_uri)
    if done is not None and done.info.status == "FINISHED":
        # Tune saves its experiment state every ten seconds or so; a sweep killed
        # between a trial's end and that save resumes the trial as unfinished.
        # Its training run is complete: report what it recorded, train nothing.
        metrics = dict(done.data.metrics)
        ray.tune.report({**metrics, EPOCHS_DONE: int(metrics.get("epoch", -1)) + 1})
        return
    train(config, callbacks=[_train_to_tune_callback()])


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _resumable_asha(**settings):
    """Ray's ASHA scheduler, made fit for resumed sweeps in two ways.

    Tune keeps the scheduler as first pickled and saves none of its state, so
    a resumed sweep would judge its remaining trials only against each other,
    and a resumed trial again at rungs it had passed: every trial added with
    results on storage (a restored one) replays them into its bracket.

    A resumed trial restarts from its latest checkpoint, which can be behind
    its latest report to Tune or ahead of a rung it never reported at; such a
    trial is judged at its next report, except at the last epoch (past max_t),
    which it always finishes so that train() logs its models."""
    import json

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class ResumableASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get(self._time_attr, 0) > self._max_t:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

        def on_trial_add(self, tune_controller, trial):
            super().on_trial_add(tune_controller, trial)
            if not trial.has_reported_at_least_once:
                return  # a new trial (its folder is not even named yet)
            bracket = self._trial_info[trial.trial_id]
            try:
                with trial.storage.storage_filesystem.open_input_stream(
                    f"{trial.path}/result.json"
                ) as stream:
                    lines = stream.read().decode().splitlines()
            except OSError:  # FileNotFoundError included: nothing saved to replay
                return
            for line in lines:
                result = json.loads(line)
                if self._time_attr in result and self._metric in result:
                    reward = self._metric_op * result[self._metric]
                    bracket.on_result(trial, result[self._time_attr], reward)

    return ResumableASHA(**settings)


# ---------------------------------------------------------------------------
# Resources


def trial_resources(config: TuneConfig) -> dict[str, float]:
    """Logical resources one trial holds while it trains, the most over the
    grid: the trial's driver, the training workers, and room for one Ray Data
    decode task (a trial whose workers take every CPU would starve its input)."""
    needs: dict[str, float] = {}
    fields = [field for field, _ in config.grid]
    for values in itertools.product(*(values for _, values in config.grid)):
        train = dataclasses.replace(config.train, **dict(zip(fields, values, strict=True)))
        cpus = (
            config.trial_driver_cpus
            + train.num_workers * train.cpus_per_worker
            + train.data_cpus_per_task
        )
        needs["CPU"] = max(needs.get("CPU", 0.0), cpus)
        if train.use_gpu:
            needs["GPU"] = max(needs.get("GPU", 0.0), float(train.num_workers))
    return needs


def concurrent_trials(cluster: Mapping[str, float], needs: Mapping[str, float]) -> int:
    """How many trials fit the cluster at once: Ray Train starts a run only
    when all its workers fit, so more trials than this would only wait."""
    from pipeline.config import ConfigError

    fits = []
    for resource, need in needs.items():
        have = float(cluster.get(resource, 0.0))
        # A tolerance so that 2 CPUs hold exactly two trials of 1.0 despite float sums.
        fits.append(math.floor(have / need + 1e-9))
    fit = min(fits, default=1)
    if fit < 1:
        shown = ", ".join(f"{cluster.get(r, 0):g} {r}" for r in needs)
        raise ConfigError(
            "one trial needs "
            + ", ".join(f"{need:g} {r}" for r, need in needs.items())
            + f" but the cluster has {shown}; lower train.num_workers, "
            "train.cpus_per_worker or train.data_cpus_per_task"
        )
    return fit


# ---------------------------------------------------------------------------
# The driver


def _absolute(config: TuneConfig) -> TuneConfig:
    """Local paths and the MLflow store made absolute: trials run in other
    processes with their own working folder (Tune's trial folder)."""
    from pipeline import tracking

    train = config.train

    def local(path: str) -> str:
        return path if "://" in path else str(Path(path).expanduser().resolve())

    uri = tracking.tracking_uri(train.tracking_uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + local(uri.removeprefix("sqlite:///"))
    elif "://" not in uri and ":" not in uri:
        uri = local(uri)
    train = dataclasses.replace(
        train,
        data=local(train.data) if train.data else train.data,
        storage_path=local(train.storage_path),
        tracking_uri=uri,
    )
    return dataclasses.replace(config, train=train)


def tune(config: TuneConfig, *, address: str | None = None) -> TuneResult:
    """Run (or resume) the sweep `config` describes; see the module docstring."""
    import ray
    from ray import tune as ray_tune
    from ray.tune.search import BasicVariantGenerator

    from pipeline import tracking
    from pipeline.train.driver import check_inputs

    config = _absolute(config)
    base = config.train
    check_inputs(base)  # the data, before any Ray work
    uri = base.tracking_uri
    experiment_path = f"{base.storage_path.rstrip('/')}/{config.name}"

    # A sweep run again under its name must be the same sweep: log_params refuses
    # other values, here before start_run marks the earlier sweep's run running.
    params = config.flat_params()
    earlier = tracking.find_run(config.name, base.experiment, uri)
    if earlier is not None:
        tracking.log_params(earlier.info.run_id, params, uri)
    parent_run_id = tracking.start_run(
        config.name,
        base.experiment,
        uri=uri,
        tags={tracking.STAGE_TAG: "tune", tracking.RECIPE_TAG: config.recipe},
    )
    try:
        tracking.log_params(parent_run_id, params, uri)
        tracking.log_text(parent_run_id, config.to_json(), "sweep_config.json", uri)

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        max_concurrent = config.max_concurrent_trials or concurrent_trials(
            ray.cluster_resources(), trial_resources(config)
        )
        tracking.set_tags(
            parent_run_id, {"vggpipe.tune.max_concurrent_trials": max_concurrent}, uri
        )

        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(
                run_trial,
                base=base.to_dict(),
                sweep=config.name,
                parent_run_id=parent_run_id,
                storage_path=f"{experiment_path}/train",
            ),
            {"CPU": config.trial_driver_cpus},
        )
        if ray_tune.Tuner.can_restore(experiment_path):
            tuner = ray_tune.Tuner.restore(
                experiment_path, trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = ray_tune.Tuner(
                trainable,
                param_space=search_space(config),
                tune_config=ray_tune.TuneConfig(
                    metric=VAL_METRIC,
                    mode="min",
                    # Rungs only before the last epoch (max_t = epochs - 1, and no stop
                    # at max_t), so that a trial ASHA keeps always ends inside train():
                    # its models logged, its checkpoints tagged.
                    scheduler=_resumable_asha(
                        time_attr=EPOCHS_DONE,
                        max_t=base.epochs - 1,
                        grace_period=config.grace_period,
                        reduction_factor=config.reduction_factor,
                        stop_last_trials=False,
                    ),
                    # Tune applies max_concurrent_trials only to Searchers; the
                    # variant generator takes its own limit.
                    search_alg=BasicVariantGenerator(
                        random_state=config.seed, max_concurrent=max_concurrent
                    ),
                    num_samples=config.num_samples,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=ray_tune.RunConfig(
                    name=config.name,
                    storage_path=base.storage_path,
                    # A trial whose driver dies is started again; its training
                    # run resumes from its latest checkpoint.
                    failure_config=ray_tune.FailureConfig(max_failures=base.max_failures),
                    verbose=1,
                ),
            )
        results = tuner.fit()
        if not _sweep_complete(experiment_path, expected_trials(config)):
            # Tune answers Ctrl-C by saving its state and returning what it has
            # (in memory, the trials it stopped look terminated; the saved state,
            # which a resume reads, knows better).
            raise KeyboardInterrupt(f"sweep {config.name} interrupted; run it again to resume")
        summary = _finish(config, parent_run_id, results, max_concurrent)
    except KeyboardInterrupt:
        tracking.end_run(parent_run_id, "KILLED", uri)
        raise
    except BaseException:
        tracking.end_run(parent_run_id, "FAILED", uri)
        raise
    tracking.end_run(parent_run_id, "FINISHED", uri)
    return summary


def expected_trials(config: TuneConfig) -> int:
    """Trials the search space makes: each grid's product, num_samples times."""
    count = config.num_samples * len(config.scales or (None,)) * len(config.lrs or (None,))
    return count * math.prod(len(values) for _, values in config.grid)


def _sweep_complete(experiment_path: str, expected: int) -> bool:
    """Whether Tune's saved experiment state has every trial made and done."""
    from ray.tune import ExperimentAnalysis

    statuses = [trial.status for trial in ExperimentAnalysis(experiment_path).trials]
    return len(statuses) >= expected and all(s in ("TERMINATED", "ERROR") for s in statuses)


def _summarise(config: TuneConfig, result) -> TrialSummary:
    """One Tune result as a table row; the outcome comes from its MLflow run:
    pipeline.train ends a run it completes as FINISHED, while a trial ASHA
    stops is ended from outside, with its run still RUNNING."""
    from pipeline import tracking
    from pipeline.config import parse_train_scale

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


def _sort_key(trial: TrialSummary) -> tuple:
    error = trial.val_top1_error
    return (trial.outcome == FAILED, math.isnan(error), error, trial.trial_id)


def _finish(config: TuneConfig, parent_run_id: str, results, max_concurrent: int) -> TuneResult:
    from pipeline import tracking
    from pipeline.config import train_scale_label

    uri = config.train.tracking_uri
    trials = sorted((_summarise(config, result) for result in results), key=_sort_key)
    finished = [t for t in trials if t.outcome == FINISHED and not math.isnan(t.val_top1_error)]
    best = finished[0] if finished else None

    for trial in trials:
        if trial.run_id is None:
            continue
        tags = {
            SWEEP_TAG: config.name,
            TRIAL_TAG: trial.trial_id,
            OUTCOME_TAG: trial.outcome,
            BEST_TAG: str(trial is best).lower(),
        }
        tracking.set_tags(trial.run_id, tags, uri)
        # Tune ends a stopped or failed trial's process, so nothing closed its run,
        # or train() saw the stop as an error and closed it FAILED. Set once: a
        # sweep finished again leaves it as it was.
        status = {STOPPED_EARLY: "KILLED", FAILED: "FAILED"}.get(trial.outcome)
        if status and tracking.get_run(trial.run_id, uri).info.status != status:
            tracking.end_run(trial.run_id, status, uri)

    model_version = _register_best(config, parent_run_id, best)
    table = trials_table(trials, [field for field, _ in config.grid])
    with tempfile.TemporaryDirectory(prefix="vggpipe-tune-") as folder:
        Path(folder, "trials.md").write_text(table)
        Path(folder, "trials.csv").write_text(trials_csv(trials, [f for f, _ in config.grid]))
        plot_error_against_lr(trials, Path(folder, "error_vs_lr.png"), title=f"Sweep {config.name}")
        for name in ("trials.md", "trials.csv", "error_vs_lr.png"):
            tracking.log_artifact(parent_run_id, str(Path(folder, name)), "sweep", uri)

    stopped = sum(t.stopped_early for t in trials)
    tracking.log_metrics(
        parent_run_id,
        {
            "trials": len(trials),
            "trials_stopped_early": stopped,
            "trials_failed": sum(t.outcome == FAILED for t in trials),
        }
        | ({"best_" + VAL_METRIC: best.val_top1_error} if best else {}),
        step=0,
        uri=uri,
    )
    if best is not None:
        tracking.set_tags(
            parent_run_id,
            {
                "vggpipe.tune.best_run_id": best.run_id,
                "vggpipe.tune.best_trial": best.trial_id,
                "vggpipe.tune.best_lr": f"{best.lr:.3g}",
                "vggpipe.tune.best_scale": train_scale_label(best.scale),
            },
            uri,
        )
    return TuneResult(
        name=config.name,
        parent_run_id=parent_run_id,
        experiment_path=results.experiment_path,
        trials=trials,
        best=best,
        model_name=config.model_name if model_version else None,
        model_version=model_version,
        alias=config.alias,
        table=table,
        max_concurrent_trials=max_concurrent,
        tracking_uri=uri,
    )


def _register_best(config: TuneConfig, parent_run_id: str, best: TrialSummary | None) -> str | None:
    """Register the best trial's best model and point the alias at it; a sweep
    finished again finds the alias already on this run's model and adds nothing."""
    from pipeline import tracking
    from pipeline.config import train_scale_label

    if best is None or best.run_id is None:
        return None
    uri = config.train.tracking_uri
    current = tracking.model_version_by_alias(config.model_name, config.alias, uri)
    if current is not None and current.run_id == best.run_id:
        version = current.version
    else:
        version = tracking.register_model(
            best.run_id,
            BEST_MODEL,
            config.model_name,
            alias=config.alias,
            tags={
                SWEEP_TAG: config.name,
                "vggpipe.tune.parent_run_id": parent_run_id,
                "lr": f"{best.lr:.3g}",
                "train_scale": train_scale_label(best.scale),
                VAL_METRIC: f"{best.val_top1_error:.4f}",
            },
            uri=uri,
        ).version
    tracking.set_tags(
        parent_run_id,
        {
            "vggpipe.tune.registered_model": config.model_name,
            "vggpipe.tune.registered_version": version,
            "vggpipe.tune.alias": config.alias,
        },
        uri,
    )
    return str(version)


# ---------------------------------------------------------------------------
# The table and the plot


def _table_rows(trials: list[TrialSummary], grid_fields: list[str]) -> list[list[str]]:
    from pipeline.config import train_scale_label

    rows = []
    for trial in trials:
        error = trial.val_top1_error
        rows.append(
            [
                trial.trial_id,
                f"{trial.lr:.3g}",
                train_scale_label(trial.scale),
                *(str(trial.grid_values.get(field, "")) for field in grid_fields),
                "-" if math.isnan(error) else f"{error:.4f}",
                str(trial.epochs_run),
                "yes" if trial.stopped_early else "no",
                trial.outcome,
                trial.run_id or "-",
            ]
        )
    return rows


TABLE_HEADER = ["trial", "lr", "S", "val top-1 error", "epochs", "stopped early", "outcome", "run"]


def _header(grid_fields: list[str]) -> list[str]:
    return [*TABLE_HEADER[:3], *grid_fields, *TABLE_HEADER[3:]]


def trials_table(trials: list[TrialSummary], grid_fields: list[str] = ()) -> str:
    """The trials as a Markdown table, best first: error is the last epoch's
    validation top-1 error (where ASHA stopped a trial, the epoch it stopped at)."""
    header = _header(list(grid_fields))
    rows = _table_rows(trials, list(grid_fields))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {"lr", "val top-1 error", "epochs"}

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if name in numeric else cell.ljust(width)
            for cell, width, name in zip(cells, widths, header, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + (":" if name in numeric else "-")
        for width, name in zip(widths, header, strict=True)
    )
    return "\n".join([line(header), rule + "|", *map(line, rows)]) + "\n"


def trials_csv(trials: list[TrialSummary], grid_fields: list[str] = ()) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["trial", "lr", "scale_min", "scale_max", *grid_fields, VAL_METRIC, "epochs_run"]
        + ["stopped_early", "outcome", "run_id", "run_name"]
    )
    for trial in trials:
        writer.writerow(
            [trial.trial_id, trial.lr, *trial.scale]
            + [trial.grid_values.get(field, "") for field in grid_fields]
            + [trial.val_top1_error, trial.epochs_run, trial.stopped_early, trial.outcome]
            + [trial.run_id or "", trial.run_name]
        )
    return out.getvalue()


def plot_error_against_lr(trials: list[TrialSummary], path: Path, *, title: str = "") -> None:
    """Validation top-1 error against learning rate (log axis), one line per
    training scale (and other grid values); hollow markers: stopped early."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    from pipeline.config import train_scale_label

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
    from pipeline.config import train_scale_label

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
    "TrialSummary",
    "TuneResult",
    "concurrent_trials",
    "expected_trials",
    "plot_error_against_lr",
    "run_trial",
    "search_space",
    "summary_lines",
    "trial_config",
    "trial_resources",
    "trials_csv",
    "trials_table",
    "tune",
]
