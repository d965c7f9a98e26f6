"""The training stage's driver: `train(config)` checks the config and the
dataset, opens the MLflow run, starts a `TorchTrainer` over
`pipeline.train.loop.train_loop_per_worker` (with MLflow's system metrics on
rank 0) and, when it finishes, logs the best and final models, the training
curves, and registers the best model when `register_as` asks. Running the same
run name again (same `storage_path`) resumes the same Ray Train run and the
same MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass

from pyarrow.fs import FileType

from pipeline import checkpoints, cluster, tracking, tracking_context
from pipeline.config import ConfigError
from pipeline.lease import RunLease
from pipeline.shards import ShardStore, canonical_uri, require_folder, resolve_filesystem
from pipeline.train.config import BEST_MODEL, FINAL_MODEL, VAL_METRIC, TrainConfig
from pipeline.train.curves import log_training_curves
from pipeline.train.loop import train_loop_with_system_metrics
from pipeline.train.progress import (
    POLL_SECONDS,
    ConsoleProgress,
    from_mlflow_epoch_metrics,
    steps_per_epoch,
)

# Set once both models are logged from the final checkpoint it names: a rerun
# that finds it (and a FINISHED run) has nothing left to do.
MODELS_LOGGED_TAG = "vggpipe.models_logged_for"


@dataclass
class TrainResult:
    run_id: str  # MLflow run
    run_name: str
    metrics: dict[str, float]  # the last epoch's
    best_checkpoint: str | None
    final_checkpoint: str | None
    epochs_run: int
    registered: str | None = None  # "name version n (alias a)" when register_as is set


# ---------------------------------------------------------------------------
# The driver


def check_inputs(config: TrainConfig) -> tuple[ShardStore, int]:
    """Everything that can fail before any Ray work: the data and the starting points."""
    if not config.data:
        raise ConfigError("data must name a prepared dataset (the preprocess output); got ''")
    require_folder(config.storage_path, "storage_path")
    store = ShardStore(config.data)
    manifest = store.manifest()  # FileNotFoundError names the folder
    for split in ("train", "val"):
        if split not in manifest.splits or manifest.splits[split].rows == 0:
            raise ConfigError(f"data {config.data!r} has no {split} images")
    if manifest.statistics is None:
        raise ConfigError(f"data {config.data!r} has no pixel statistics in its manifest")
    manifest.require_scale(config.scale_max, "scale_max", config.data)
    manifest.require_scale(config.check_scale, "test_scale", config.data)
    return store, len(manifest.classes)


@dataclass
class _Checked:
    """What `train` settles before it takes the run: the config with absolute
    paths, the data's class count, the tracking URI, the checkpoints to start
    from, the run's tags and the MLflow run of this name, if any."""

    config: TrainConfig
    num_classes: int
    uri: str
    init_from: str | None
    resume_from: str | None
    tags: dict[str, str]
    previous: object | None
    train_images: int


def _refuse_a_start_the_workers_cannot_take(
    field: str, reference: str, start: TrainConfig, config: TrainConfig
) -> None:
    """init_from copies net A's layers (`vgg.init_from_shallower`); resume_from
    loads every layer of the same net. Either refused here, in one line before
    Ray starts, rather than in every worker."""
    wanted = "A" if field == "init_from" else config.config
    if start.config != wanted:
        role = "copies net A's layers" if field == "init_from" else "continues the same config"
        raise ConfigError(f"{field} {role}: {reference} is config {start.config}, not {wanted}")
    for name in ("width", "crop_size"):
        if getattr(start, name) != getattr(config, name):
            raise ConfigError(
                f"{field}: {reference} has {name} {getattr(start, name)}, "
                f"this run {getattr(config, name)}"
            )


def _check(config: TrainConfig) -> _Checked:
    # Workers and Ray Data tasks do not share the driver's working folder:
    # every local path crosses the Ray boundary absolute.
    config = dataclasses.replace(
        config,
        data=canonical_uri(config.data) if config.data else config.data,
        storage_path=canonical_uri(config.storage_path),
        **{
            name: canonical_uri(value)
            for name in ("init_from", "resume_from")
            if (value := getattr(config, name)) and os.path.exists(value)
        },
    )
    store, num_classes = check_inputs(config)
    uri = tracking.tracking_uri(config.tracking_uri)
    init_from = checkpoints.resolve(config.init_from, uri) if config.init_from else None
    resume_from = checkpoints.resolve(config.resume_from, uri) if config.resume_from else None
    for field, path in (("init_from", init_from), ("resume_from", resume_from)):
        if path:
            start, start_classes = checkpoints.read_config(path)
            reference = getattr(config, field)
            if start_classes != num_classes:
                raise ConfigError(
                    f"{reference} was trained on {start_classes} classes, the data has {num_classes}"
                )
            _refuse_a_start_the_workers_cannot_take(field, reference, start, config)

    tags = {
        tracking.STAGE_TAG: "train",
        tracking.RECIPE_TAG: config.recipe,
        tracking.DATASET_TAG: store.manifest_sha256(),
        "vggpipe.config": config.config,
        "vggpipe.train_scale": str(config.train_scale),
    }
    if config.init_from:
        tags[tracking.INIT_FROM_TAG] = config.init_from
    if config.resume_from:
        tags["vggpipe.resume_from"] = config.resume_from
    previous = tracking.find_run(
        config.name, config.experiment, uri, stage="train", parent_run_id=config.parent_run_id
    )
    # A run of this name with other settings is refused before anything is written.
    tracking.refuse_other_settings(previous, config)
    train_images = store.manifest().splits["train"].rows
    return _Checked(config, num_classes, uri, init_from, resume_from, tags, previous, train_images)


def train(
    config: TrainConfig, *, address: str | None = None, callbacks: list | None = None
) -> TrainResult:
    """Run (or resume) the training run `config` describes; see the module docstring.

    `callbacks` go to Ray Train's RunConfig (a Tune sweep passes the callback
    that forwards each report to Tune)."""
    checked = _check(config)
    # One live command per run name: a second one is refused here.
    name = checked.config.name
    with RunLease(f"{checked.config.storage_path}/{name}", f"run {name!r}"):
        return _train_checked(checked, address, callbacks)


def _train_checked(checked: _Checked, address: str | None, callbacks: list | None) -> TrainResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = checked.config
    recorded = _finished_result(checked.previous, config)
    if recorded is None:
        # Before the run is opened: a worker group the cluster cannot hold
        # would otherwise wait for ever with its MLflow run RUNNING.
        cluster.connect(address)
        shortfall = worker_shortfall(config, ray.nodes())
        if shortfall and not config.wait_for_resources:
            raise ConfigError(
                f"{shortfall}; lower num_workers or cpus_per_worker, or on a cluster "
                "that adds nodes on demand set wait_for_resources=true"
            )
        if shortfall:
            print(f"Waiting for Ray to add nodes: {shortfall} (Ctrl-C stops)", file=sys.stderr)
    run = tracking.start_run(
        config.name,
        config.experiment,
        uri=checked.uri,
        parent_run_id=config.parent_run_id,
        tags=checked.tags,
        config=config,
    )
    try:
        run.log_text(config.to_json(), "config.json")
        run.log_dataset(config.data, tracking_context.TRAINING)
        if recorded is not None:
            # The same settings ran to the end before: nothing to train, no Ray to start.
            # register_as changes no result: a rerun may add it to a finished run
            recorded.registered = register_best_model(run, config)
            run.end("FINISHED")
            return recorded

        trainer = TorchTrainer(
            train_loop_with_system_metrics,
            train_loop_config={
                "config": config.to_dict(),
                "num_classes": checked.num_classes,
                "run_id": run.run_id,
                "tracking_uri": run.uri,
                "init_from": config.init_from,
                "init_from_checkpoint": checked.init_from,
                "resume_from_checkpoint": checked.resume_from,
            },
            scaling_config=ScalingConfig(
                num_workers=config.num_workers,
                use_gpu=config.use_gpu,
                resources_per_worker={"CPU": config.cpus_per_worker}
                | ({"GPU": 1} if config.use_gpu else {}),
            ),
            run_config=RunConfig(
                name=config.name,
                storage_path=config.storage_path,
                failure_config=FailureConfig(max_failures=config.max_failures),
                callbacks=callbacks,
                checkpoint_config=CheckpointConfig(
                    num_to_keep=config.keep_checkpoints,
                    checkpoint_score_attribute=VAL_METRIC,
                    checkpoint_score_order="min",
                ),
            ),
        )
        progress = ConsoleProgress(
            run.client,
            run.run_id,
            name=config.name,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch(checked.train_images, config),
        )
        result = _fit_interruptibly(trainer, progress)
        summary = _finish(run, config, result)
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    return summary


def _fit_interruptibly(trainer, progress: ConsoleProgress):
    """`trainer.fit()` on a thread of its own, so that Ctrl-C stops the driver at
    once. On the main thread Ray Train answers Ctrl-C by asking its controller to
    abort and waiting for the answer, which never came while a worker group
    waited for resources (more than two minutes here, Ray 2.60); off the main
    thread it leaves the signal to Python. The run's actors belong to this
    driver and end with it. Meanwhile the main thread shows the run's progress."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    next_poll = time.monotonic()
    while thread.is_alive():
        thread.join(min(0.5, POLL_SECONDS))
        if time.monotonic() >= next_poll:
            progress.poll()
            next_poll = time.monotonic() + POLL_SECONDS
    progress.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def worker_shortfall(config: TrainConfig, nodes: list[dict]) -> str | None:
    """Why the alive Ray `nodes` (as `ray.nodes()` lists them) cannot hold the
    run's workers and one Ray Data decode task beside them, or None when they
    can. Ray Train places every worker whole on one node, and a decode task
    that finds no CPU left starves the workers it feeds."""
    bundle = {"CPU": config.cpus_per_worker} | ({"GPU": 1.0} if config.use_gpu else {})
    free = [dict(node["Resources"]) for node in nodes if node.get("Alive")]
    placed = 0
    for node in free:
        while placed < config.num_workers and all(
            node.get(name, 0.0) >= need - 1e-9 for name, need in bundle.items()
        ):
            for name, need in bundle.items():
                node[name] = node.get(name, 0.0) - need
            placed += 1
    asked = " + ".join(f"{need:g} {name}" for name, need in bundle.items())
    total = ", ".join(
        f"{sum(n['Resources'].get(name, 0.0) for n in nodes if n.get('Alive')):g} {name}"
        for name in bundle
    )
    where = f"the Ray cluster has {total} on {len(free)} node(s)"
    if placed < config.num_workers:
        return (
            f"num_workers={config.num_workers} asks for {config.num_workers} x ({asked}) "
            f"and {where}: room for {placed} worker(s)"
        )
    if not any(node.get("CPU", 0.0) >= config.data_cpus_per_task - 1e-9 for node in free):
        return (
            f"data_cpus_per_task={config.data_cpus_per_task:g} finds no CPU left beside "
            f"{config.num_workers} x ({asked}): {where}"
        )
    return None


def _finished_result(previous, config: TrainConfig) -> TrainResult | None:
    """What an earlier run of this name recorded, when it finished with its
    models logged and its final checkpoint is still in storage; else None."""
    if previous is None or previous.info.status != "FINISHED":
        return None
    tags = previous.data.tags
    final = tags.get(tracking.FINAL_CHECKPOINT_TAG)
    if not final or tags.get(MODELS_LOGGED_TAG) != final:
        return None
    filesystem, path = resolve_filesystem(final)
    if filesystem.get_file_info(path).type != FileType.Directory:
        return None
    metrics = from_mlflow_epoch_metrics(previous.data.metrics)
    return TrainResult(
        run_id=previous.info.run_id,
        run_name=config.name,
        metrics=metrics,
        best_checkpoint=tags.get(tracking.BEST_CHECKPOINT_TAG),
        final_checkpoint=final,
        epochs_run=int(metrics.get("epoch", -1)) + 1,
    )


def _finish(run: tracking.Run, config: TrainConfig, result) -> TrainResult:
    """After fit: tag the best and final checkpoints, log both models."""
    best = min(result.best_checkpoints or [], key=lambda cm: cm[1][VAL_METRIC], default=None)
    final = result.checkpoint
    # URIs, not Ray's scheme-less paths: later stages load them on any node.
    best_uri = checkpoints.uri_of(best[0]) if best else None
    final_uri = checkpoints.uri_of(final) if final else None
    tags = {}
    if best_uri is not None:
        tags[tracking.BEST_CHECKPOINT_TAG] = best_uri
    if final_uri is not None:
        tags[tracking.FINAL_CHECKPOINT_TAG] = final_uri
    run.set_tags(tags)

    logged = run.get().data.tags.get(MODELS_LOGGED_TAG, "")
    if final is not None and logged != final_uri:
        to_log = [(FINAL_MODEL, final, result.metrics or {})]
        if best is not None:
            to_log.insert(0, (BEST_MODEL, *best))
        for name, checkpoint, checkpoint_metrics in to_log:
            # Linked to the step of the epoch the checkpoint was saved at, as its metrics are.
            step = int(checkpoint_metrics.get("global_step", 0))
            run.log_model(checkpoints.load(checkpoints.uri_of(checkpoint)).model, name, step=step)
        run.set_tags({MODELS_LOGGED_TAG: final_uri})
    log_training_curves(run, title=f"{config.name} (VGG {config.config})")

    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainResult(
        run_id=run.run_id,
        run_name=config.name,
        metrics=metrics,
        best_checkpoint=best_uri,
        final_checkpoint=final_uri,
        epochs_run=int(metrics.get("epoch", -1)) + 1,
        registered=register_best_model(run, config),
    )


def register_best_model(run: tracking.Run, config: TrainConfig) -> str | None:
    """Register the run's best model (its final one when no checkpoint was
    scored) as `config.register_as` says; what was registered, or None.
    Registered once: a rerun finds the version it made."""
    if config.registered_model is None:
        return None
    name, alias = config.registered_model
    tags = run.get().data.tags
    if MODELS_LOGGED_TAG not in tags:
        return None  # training never reached a checkpoint: no model to register
    model = BEST_MODEL if tags.get(tracking.BEST_CHECKPOINT_TAG) else FINAL_MODEL
    version = tracking.register_model(run.run_id, model, name, alias=alias, uri=run.uri)
    return f"{name} version {version.version}" + (f" (alias {alias})" if alias else "")


def summary_lines(result: TrainResult, uri: str) -> list[str]:
    metrics = result.metrics
    lines = [
        f"Trained {result.run_name}: {result.epochs_run} epochs (MLflow run {result.run_id}).",
        f"  val top-1 error {metrics.get('val_top1_error', float('nan')):.4f}"
        f"   top-5 error {metrics.get('val_top5_error', float('nan')):.4f}"
        f"   train loss {metrics.get('train_loss', float('nan')):.4f}",
        f"  images/s {metrics.get('images_per_second', float('nan')):.1f}"
        f"   waiting on data {100 * metrics.get('data_wait_fraction', float('nan')):.0f}% of step time",
        f"  best checkpoint  {result.best_checkpoint}",
        f"  final checkpoint {result.final_checkpoint}",
    ]
    if result.registered:
        lines.append(f"  registered model {result.registered}")
    if uri.startswith("sqlite:///"):
        lines.append(f"Browse: mlflow ui --backend-store-uri {uri}")
    return lines


__all__ = ["TrainResult", "check_inputs", "summary_lines", "train", "worker_shortfall"]
