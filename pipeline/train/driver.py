"""The training stage's driver: `train(config)` checks the config and the
dataset, opens the MLflow run, starts a `TorchTrainer` over
`pipeline.train.loop.train_loop_per_worker` and, when it finishes, logs the
best and final models. Running the same run name again (same `storage_path`)
resumes the same Ray Train run and the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from pyarrow.fs import FileType

from pipeline import checkpoints, tracking
from pipeline.config import ConfigError
from pipeline.shards import ShardStore, canonical_uri, resolve_filesystem
from pipeline.train.config import BEST_MODEL, FINAL_MODEL, VAL_METRIC, TrainConfig
from pipeline.train.loop import train_loop_per_worker

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


# ---------------------------------------------------------------------------
# The driver


def check_inputs(config: TrainConfig) -> tuple[ShardStore, int]:
    """Everything that can fail before any Ray work: the data and the starting points."""
    if not config.data:
        raise ConfigError("data must name a prepared dataset (the preprocess output); got ''")
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


def train(
    config: TrainConfig, *, address: str | None = None, callbacks: list | None = None
) -> TrainResult:
    """Run (or resume) the training run `config` describes; see the module docstring.

    `callbacks` go to Ray Train's RunConfig (a Tune sweep passes the callback
    that forwards each report to Tune)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

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
    for reference, path in ((config.init_from, init_from), (config.resume_from, resume_from)):
        if path:
            start, start_classes = checkpoints.read_config(path)
            if start_classes != num_classes:
                raise ConfigError(
                    f"{reference} was trained on {start_classes} classes, the data has {num_classes}"
                )

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
    # Refuses, before writing anything, a run of this name with other settings.
    run = tracking.start_run(
        config.name,
        config.experiment,
        uri=uri,
        parent_run_id=config.parent_run_id,
        tags=tags,
        config=config,
    )
    try:
        run.log_text(config.to_json(), "config.json")
        recorded = _finished_result(previous, config)
        if recorded is not None:
            # The same settings ran to the end before: nothing to train, no Ray to start.
            run.end("FINISHED")
            return recorded

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": config.to_dict(),
                "num_classes": num_classes,
                "run_id": run.run_id,
                "tracking_uri": run.uri,
                "init_from": config.init_from,
                "init_from_checkpoint": init_from,
                "resume_from_checkpoint": resume_from,
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
        result = trainer.fit()
        summary = _finish(run, config, result)
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    return summary


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
    metrics = dict(previous.data.metrics)
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
    tags = {}
    if best is not None:
        tags[tracking.BEST_CHECKPOINT_TAG] = best[0].path
    if final is not None:
        tags[tracking.FINAL_CHECKPOINT_TAG] = final.path
    run.set_tags(tags)

    logged = run.get().data.tags.get(MODELS_LOGGED_TAG, "")
    if final is not None and logged != final.path:
        to_log = [(FINAL_MODEL, final, result.metrics or {})]
        if best is not None:
            to_log.insert(0, (BEST_MODEL, *best))
        for name, checkpoint, checkpoint_metrics in to_log:
            # Linked to the epoch the checkpoint was saved at, as its metrics are.
            step = int(checkpoint_metrics.get("epoch", 0))
            run.log_model(checkpoints.load(checkpoint.path).model, name, step=step)
        run.set_tags({MODELS_LOGGED_TAG: final.path})

    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainResult(
        run_id=run.run_id,
        run_name=config.name,
        metrics=metrics,
        best_checkpoint=best[0].path if best else None,
        final_checkpoint=final.path if final else None,
        epochs_run=int(metrics.get("epoch", -1)) + 1,
    )


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
    if uri.startswith("sqlite:///"):
        lines.append(f"Browse: mlflow ui --backend-store-uri {uri}")
    return lines


__all__ = ["TrainResult", "check_inputs", "summary_lines", "train"]
