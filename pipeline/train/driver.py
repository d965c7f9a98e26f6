"""The training stage: the paper's recipe as a Ray Train (V2) data-parallel run.

`train(config)` runs in the driver: it checks the config and the dataset,
opens the MLflow run, starts a `TorchTrainer` and, when it finishes, logs the
best and final models. `train_loop_per_worker` is what every worker runs; it
reads top to bottom in the order data, model, loss, optimiser, schedule,
resume, epochs, report.

Fault tolerance: every epoch ends in a checkpoint; a failed worker makes Ray
restart the group (up to `max_failures` times) and the loop continues from the
latest checkpoint. Running the same run name again (same `storage_path`)
resumes the same Ray Train run and the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline import checkpoints, ingest, tracking
from pipeline.config import ConfigError, flat_params
from pipeline.shards import ShardStore, canonical_uri
from pipeline.train.config import TrainConfig
from vgg import init_from_shallower
from vgg.transforms import prepare_training_batch, to_model_input

VAL_METRIC = "val_top1_error"


@dataclass
class TrainResult:
    run_id: str  # MLflow run
    run_name: str
    metrics: dict[str, float]  # the last epoch's
    best_checkpoint: str | None
    final_checkpoint: str | None
    epochs_run: int


# ---------------------------------------------------------------------------
# The learning-rate schedule


@dataclass
class PlateauSchedule:
    """The paper's schedule: multiply the lr by `factor` when validation top-1
    error has not improved for `patience` epochs; after `max_reductions`
    reductions the next plateau ends training. Plain values, so it checkpoints."""

    lr: float
    factor: float
    patience: int
    max_reductions: int
    best_error: float = math.inf
    epochs_since_best: int = 0
    reductions: int = 0
    finished: bool = False

    def step(self, error: float) -> None:
        if error < self.best_error:
            self.best_error, self.epochs_since_best = error, 0
            return
        self.epochs_since_best += 1
        if self.epochs_since_best > self.patience:
            if self.reductions >= self.max_reductions:
                self.finished = True
            else:
                self.lr *= self.factor
                self.reductions += 1
                self.epochs_since_best = 0


# ---------------------------------------------------------------------------
# The worker


def _seed_everything(*words: int) -> torch.Generator:
    """Seed torch's global RNG (dropout) from `words`; return a generator for
    the colour shift. Seeding per (seed, epoch, rank) makes a resumed epoch
    draw exactly what an uninterrupted one would."""
    seed = int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def _topk_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    top1 = (top[:, 0] != labels).sum().item()
    top5 = (~(top == labels[:, None]).any(dim=1)).sum().item()
    return top1, top5


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _validate(model, config: TrainConfig, stats, rank, world, device) -> dict[str, float]:
    model.eval()
    sums = [0.0, 0.0, 0.0]  # top-1 errors, top-5 errors, images
    autocast = _autocast(config, device)
    with torch.no_grad():
        for batch in ingest.validation_batches(
            config.data,
            scale=config.check_scale,
            crop_size=config.crop_size,
            batch_size=config.batch_size_per_worker,
            rank=rank,
            world_size=world,
            device=device,
            cpus_per_task=config.data_cpus_per_task,
        ):
            images = to_model_input(
                batch["image"], stats.mean_rgb, channels_last=config.channels_last
            )
            with autocast:
                logits = model(images)
            top1, top5 = _topk_errors(logits.float(), batch["label"])
            sums = [sums[0] + top1, sums[1] + top5, sums[2] + len(batch["label"])]
    top1, top5, images = _all_sum(sums, device)
    return {"val_top1_error": top1 / images, "val_top5_error": top5 / images, "val_images": images}


def _node_count() -> int:
    """How many Ray nodes the worker group spans (logged, so a run shows it)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _autocast(config: TrainConfig, device: torch.device):
    if not config.bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _initial_weights(model: nn.Module, loop_config: dict[str, Any]) -> list[str]:
    """Apply init_from (copy from net A) or resume_from (all layers); returns
    the names of the parameters copied from net A."""
    if loop_config.get("init_from_checkpoint"):
        net_a = checkpoints.load(loop_config["init_from_checkpoint"]).model
        return init_from_shallower(model, net_a)
    if loop_config.get("resume_from_checkpoint"):
        model.load_state_dict(
            checkpoints.load(loop_config["resume_from_checkpoint"]).model.state_dict()
        )
    return []


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run_id, uri = loop_config["run_id"], loop_config["tracking_uri"]
    nodes = _node_count()

    # Data: pixel statistics from the manifest; batches come per epoch below.
    stats = ingest.pixel_statistics(config.data)
    micro_batch = config.micro_batch_size or config.batch_size_per_worker
    accumulation = config.batch_size_per_worker // micro_batch

    # Model: the same seed on every rank; DDP also broadcasts rank 0's weights.
    torch.manual_seed(config.seed)
    model = checkpoints.build_model(config, loop_config["num_classes"])
    copied = _initial_weights(model, loop_config)
    if copied and rank == 0:
        tracking.log_dict(
            run_id,
            {"init_from": loop_config["init_from"], "copied_parameters": copied},
            "init/copied_layers.json",
            uri,
        )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    forward = torch.compile(model) if config.compile else model

    # Loss, optimiser, schedule.
    loss_fn = nn.CrossEntropyLoss()
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = PlateauSchedule(
        config.lr, config.lr_factor, config.lr_patience, config.max_lr_reductions
    )

    # Resume: a restarted worker group or a rerun of the same run name.
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            weights = checkpoints.load_weights(folder)
            state = checkpoints.load_training_state(folder)
        _unwrap(model).load_state_dict(weights)
        optimiser.load_state_dict(state["optimizer"])
        schedule = PlateauSchedule(**state["schedule"])
        start_epoch = state["epoch"] + 1

    # Epochs.
    for epoch in range(start_epoch, config.epochs):
        if schedule.finished:
            break
        for group in optimiser.param_groups:
            group["lr"] = schedule.lr
        colour_generator = _seed_everything(config.seed, epoch, rank)
        model.train()
        loss_sum, images_seen, steps, waiting = 0.0, 0, 0, 0.0
        epoch_start = time.perf_counter()
        batches = iter(
            ingest.training_batches(
                config.data,
                epoch=epoch,
                rank=rank,
                world_size=world,
                scale=config.train_scale,
                crop_size=config.crop_size,
                batch_size=micro_batch,
                seed=config.seed,
                decode_on=config.decode_on,
                device=device,
                cpus_per_task=config.data_cpus_per_task,
            )
        )
        while config.max_steps_per_epoch is None or steps < config.max_steps_per_epoch:
            optimiser.zero_grad(set_to_none=True)
            micro_batches = []
            wait_start = time.perf_counter()
            for _ in range(accumulation):
                batch = next(batches, None)
                if batch is None:
                    break
                micro_batches.append(batch)
            waiting += time.perf_counter() - wait_start
            if len(micro_batches) < accumulation:
                break  # the epoch's last partial step is dropped, as drop_last does
            for index, batch in enumerate(micro_batches):
                images = prepare_training_batch(
                    batch["image"],
                    stats,
                    colour_shift_std=config.colour_shift_std,
                    generator=colour_generator,
                    channels_last=config.channels_last,
                )
                # Only the last micro-batch synchronises gradients across workers.
                sync = index == len(micro_batches) - 1 or not hasattr(model, "no_sync")
                with nullcontext() if sync else model.no_sync(), _autocast(config, device):
                    loss = loss_fn(forward(images), batch["label"]) / accumulation
                loss.backward()
                loss_sum += loss.item() * accumulation * len(batch["label"])
                images_seen += len(batch["label"])
            optimiser.step()
            steps += 1
        elapsed = time.perf_counter() - epoch_start

        train_loss, images_total, waiting_total, elapsed_total = _all_sum(
            [loss_sum, images_seen, waiting, elapsed], device
        )
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss / max(images_total, 1),
            "lr": schedule.lr,
            "images_per_second": images_total / max(elapsed_total / world, 1e-9),
            "data_wait_fraction": waiting_total / max(elapsed_total, 1e-9),
            "steps": steps,
            "nodes": nodes,
            **_validate(forward, config, stats, rank, world, device),
        }
        schedule.step(metrics[VAL_METRIC])

        with tempfile.TemporaryDirectory() as folder:
            report_checkpoint = None
            if rank == 0:
                checkpoints.save(
                    folder,
                    _unwrap(model),
                    config,
                    loop_config["num_classes"],
                    {
                        "optimizer": optimiser.state_dict(),
                        "schedule": schedule.__dict__.copy(),
                        "epoch": epoch,
                        "seed": config.seed,
                    },
                )
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
                tracking.log_metrics(run_id, metrics, step=epoch, uri=uri)
            ray.train.report(metrics, checkpoint=report_checkpoint)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


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
    run_id = tracking.start_run(
        config.name, config.experiment, uri=uri, parent_run_id=config.parent_run_id, tags=tags
    )
    try:
        tracking.log_params(run_id, flat_params(config), uri)
        tracking.log_text(run_id, config.to_json(), "config.json", uri)

        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": config.to_dict(),
                "num_classes": num_classes,
                "run_id": run_id,
                "tracking_uri": uri,
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
        summary = _finish(run_id, uri, config, result)
    except BaseException:
        tracking.end_run(run_id, "FAILED", uri)
        raise
    tracking.end_run(run_id, "FINISHED", uri)
    return summary


def _finish(run_id: str, uri: str, config: TrainConfig, result) -> TrainResult:
    """After fit: tag the best and final checkpoints, log both models."""
    best = min(result.best_checkpoints or [], key=lambda cm: cm[1][VAL_METRIC], default=None)
    final = result.checkpoint
    tags = {}
    if best is not None:
        tags[tracking.BEST_CHECKPOINT_TAG] = best[0].path
    if final is not None:
        tags[tracking.FINAL_CHECKPOINT_TAG] = final.path
    tracking.set_tags(run_id, tags, uri)

    logged = tracking.get_run(run_id, uri).data.tags.get("vggpipe.models_logged_for", "")
    if final is not None and logged != final.path:
        for name, checkpoint in (("best_model", best[0] if best else None), ("final_model", final)):
            if checkpoint is None:
                continue
            loaded = checkpoints.load(checkpoint.path)
            # A batch of two: MLflow exports the model with torch.export, which would
            # fix the batch dimension to the example's if it were one.
            example = np.zeros((2, 3, config.crop_size, config.crop_size), dtype=np.float32)
            tracking.log_model(run_id, loaded.model, name, example, uri)
        tracking.set_tags(run_id, {"vggpipe.models_logged_for": final.path}, uri)

    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainResult(
        run_id=run_id,
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


__all__ = ["PlateauSchedule", "TrainResult", "check_inputs", "summary_lines", "train"]
