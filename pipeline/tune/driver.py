"""The sweep's driver: `tune(config)` runs a Ray Tune sweep of training runs
with ASHA early stopping, and resumes it when run again.

It opens the sweep's MLflow parent run, builds Tune's search space (learning
rates, training scales S, grids over any other training field) and runs one
Tune trial per point. Each trial is a function trainable, `run_trial`, that
calls `pipeline.train.train` for its config: that builds and fits a
`TorchTrainer` (Ray Train V2), whose reports reach Tune through Ray's
Train-to-Tune callback, so ASHA (`pipeline.tune.asha`) sees every epoch's validation top-1 error and
stops poor trials. The trial's training run is an MLflow run nested under the
parent. When Tune is done, `pipeline.tune.results` marks each trial, registers
the champion and logs the trials table and plot to the parent run.

Files, under the base config's storage_path:

    <name>/                     Tune's experiment (tuner.pkl, experiment state)
    <name>/<trial id>/          one folder per trial (params.json, result.json)
    <name>/train/<run name>/    that trial's Ray Train run (checkpoints)

Running the same sweep name again resumes it (`Tuner.restore`): finished and
stopped trials are not run again; an interrupted trial restarts its training
run, which resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune as ray_tune
from ray.tune.search import BasicVariantGenerator

from pipeline import cluster, tracking
from pipeline.config import ConfigError, parse_train_scale, train_scale_label
from pipeline.tune.asha import EPOCHS_DONE, EpochsToTune, sweep_scheduler
from pipeline.tune.results import VAL_METRIC, TuneResult, finish_sweep, train_run_name

if TYPE_CHECKING:
    from pipeline.train.config import TrainConfig
    from pipeline.tune.config import TuneConfig

# The training stack (torch, Ray Train) is imported inside the functions that
# run it: the search space and the resources are also asked for without it.


# ---------------------------------------------------------------------------
# The search space and each trial's config


def search_space(config: TuneConfig) -> dict[str, Any]:
    """Tune's param_space: plain values and Tune domains only (the base config
    travels separately). Scales are strings ("36", "36:44") so that Tune's
    trial names and tables show them as written."""
    scales = config.scales or ((config.train.scale_min, config.train.scale_max),)
    # Grids expand with the last key varying fastest; lr last makes neighbouring
    # trials differ in lr, so ASHA's first rungs compare learning rates early.
    space: dict[str, Any] = {
        field: ray_tune.grid_search(list(values)) for field, values in config.grid
    }
    space["scale"] = ray_tune.grid_search([train_scale_label(s, sep=":") for s in scales])
    space["lr"] = (
        ray_tune.grid_search(list(config.lrs))
        if config.lrs
        else ray_tune.loguniform(*config.lr_range)
    )
    return space


def expected_trials(config: TuneConfig) -> int:
    """Trials the search space makes: each grid's product, num_samples times."""
    count = config.num_samples * len(config.scales or (None,)) * len(config.lrs or (None,))
    return count * math.prod(len(values) for _, values in config.grid)


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


# ---------------------------------------------------------------------------
# The trainable


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
    from pipeline.train.config import TrainConfig
    from pipeline.train.driver import train
    from pipeline.train.progress import from_mlflow_epoch_metrics

    config = trial_config(
        TrainConfig.from_dict(base),
        params,
        sweep=sweep,
        trial_id=ray_tune.get_context().get_trial_id(),
        parent_run_id=parent_run_id,
        storage_path=storage_path,
    )
    done = tracking.find_run(config.name, config.experiment, config.tracking_uri)
    if done is not None and done.info.status == "FINISHED":
        # Tune saves its experiment state every ten seconds or so; a sweep killed
        # between a trial's end and that save resumes the trial as unfinished.
        # Its training run is complete: report what it recorded, train nothing.
        metrics = from_mlflow_epoch_metrics(done.data.metrics)
        ray_tune.report({**metrics, EPOCHS_DONE: int(metrics.get("epoch", -1)) + 1})
        return
    train(config, callbacks=[EpochsToTune()])


def _trial_dirname(trial) -> str:
    return trial.trial_id


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


def _tuner(config: TuneConfig, trainable, experiment_path: str, max_concurrent: int):
    """The sweep's Tuner: restored from its experiment folder when there is one."""
    if ray_tune.Tuner.can_restore(experiment_path):
        # Tune restores the scheduler and the search algorithm as first saved,
        # max_concurrent included; the trainable (and its base config) is new.
        return ray_tune.Tuner.restore(
            experiment_path, trainable, resume_unfinished=True, resume_errored=True
        )
    return ray_tune.Tuner(
        trainable,
        param_space=search_space(config),
        tune_config=ray_tune.TuneConfig(
            metric=VAL_METRIC,
            mode="min",
            scheduler=sweep_scheduler(config),
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
            storage_path=config.train.storage_path,
            # A trial whose driver dies is started again; its training
            # run resumes from its latest checkpoint.
            failure_config=ray_tune.FailureConfig(max_failures=config.train.max_failures),
            verbose=1,
        ),
    )


def tune(config: TuneConfig, *, address: str | None = None) -> TuneResult:
    """Run (or resume) the sweep `config` describes; see the module docstring."""
    from pipeline.train.driver import check_inputs

    config = _absolute(config)
    base = config.train
    check_inputs(base)  # the data, before any Ray work
    uri = base.tracking_uri
    experiment_path = f"{base.storage_path.rstrip('/')}/{config.name}"

    # A sweep run again under its name must be the same sweep: start_run refuses
    # other values of the settings that change the result before it writes.
    parent = tracking.start_run(
        config.name,
        base.experiment,
        uri=uri,
        tags={tracking.STAGE_TAG: "tune", tracking.RECIPE_TAG: config.recipe},
        config=config,
    )
    try:
        parent.log_text(config.to_json(), "sweep_config.json")

        cluster.connect(address)
        max_concurrent = config.max_concurrent_trials or concurrent_trials(
            ray.cluster_resources(), trial_resources(config)
        )
        parent.set_tags({"vggpipe.tune.max_concurrent_trials": max_concurrent})

        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(
                run_trial,
                base=base.to_dict(),
                sweep=config.name,
                parent_run_id=parent.run_id,
                storage_path=f"{experiment_path}/train",
            ),
            {"CPU": config.trial_driver_cpus},
        )
        results = _tuner(config, trainable, experiment_path, max_concurrent).fit()
        if not _sweep_complete(experiment_path, expected_trials(config)):
            # Tune answers Ctrl-C by saving its state and returning what it has
            # (in memory, the trials it stopped look terminated; the saved state,
            # which a resume reads, knows better).
            raise KeyboardInterrupt(f"sweep {config.name} interrupted; run it again to resume")
        summary = finish_sweep(config, parent, results, max_concurrent)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    return summary


def _sweep_complete(experiment_path: str, expected: int) -> bool:
    """Whether Tune's saved experiment state has every trial made and done."""
    statuses = [trial.status for trial in ray_tune.ExperimentAnalysis(experiment_path).trials]
    return len(statuses) >= expected and all(s in ("TERMINATED", "ERROR") for s in statuses)


__all__ = [
    "concurrent_trials",
    "expected_trials",
    "run_trial",
    "search_space",
    "trial_config",
    "trial_resources",
    "tune",
]
