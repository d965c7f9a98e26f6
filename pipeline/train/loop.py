"""What every training worker runs (`train_loop_per_worker`), top to bottom in
the order data, model, loss, optimiser, schedule, resume, epochs, report; and
the paper's plateau schedule it steps.

Fault tolerance: every epoch ends in a checkpoint; a failed worker makes Ray
restart the group (up to `max_failures` times) and the loop continues from the
latest checkpoint, drawing what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline import checkpoints
from pipeline.train.config import VAL_METRIC, TrainConfig
from vgg import init_from_shallower
from vgg.transforms import TrainingAugmentation, to_model_input

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
    from pipeline import ingest

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


def sgd_step(
    model: nn.Module,
    forward,
    optimiser: torch.optim.Optimizer,
    micro_batches: list[dict[str, Any]],
    *,
    augmentation: TrainingAugmentation,
    stats,
    generator: torch.Generator,
    config: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """One SGD step over `micro_batches` of uint8 crops: the device half of the
    augmentation (its noise drawn on the CPU `generator`), forward, cross-entropy
    loss, backward with gradients accumulated and synchronised across workers on
    the last micro-batch only, then the optimiser step. Returns the summed loss
    of the step's images as a detached device tensor: the caller reads it once
    per step, not once per micro-batch."""
    optimiser.zero_grad(set_to_none=True)
    accumulation = len(micro_batches)
    total = torch.zeros((), device=device)
    for index, batch in enumerate(micro_batches):
        images = augmentation.finish(
            batch["image"], stats, generator=generator, channels_last=config.channels_last
        )
        sync = index == accumulation - 1 or not hasattr(model, "no_sync")
        with nullcontext() if sync else model.no_sync(), _autocast(config, device):
            loss = nn.functional.cross_entropy(forward(images), batch["label"]) / accumulation
        loss.backward()
        total = total + loss.detach().float() * accumulation * len(batch["label"])
    optimiser.step()
    return total


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # Ray Data and MLflow are imported here, in the worker, not with the
    # module: Ray Train's controller loads this module to unpickle the loop and
    # would otherwise pay their imports (1.5 s here) before it starts a worker.
    import ray.train
    import ray.train.torch

    from pipeline import ingest, tracking
    from pipeline.train.progress import StepLog, to_mlflow_epoch_metrics

    config = TrainConfig.from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    run = tracking.Run(loop_config["run_id"], loop_config["tracking_uri"])
    nodes = _node_count()

    # Data: pixel statistics from the manifest; batches come per epoch below.
    stats = ingest.pixel_statistics(config.data)
    augmentation = TrainingAugmentation(
        config.train_scale, config.crop_size, colour_shift_std=config.colour_shift_std
    )
    micro_batch = config.micro_batch_size or config.batch_size_per_worker
    accumulation = config.batch_size_per_worker // micro_batch

    # Model: the same seed on every rank; DDP also broadcasts rank 0's weights.
    torch.manual_seed(config.seed)
    model = checkpoints.build_model(config, loop_config["num_classes"])
    copied = _initial_weights(model, loop_config)
    if copied and rank == 0:
        run.log_dict(
            {"init_from": loop_config["init_from"], "copied_parameters": copied},
            "init/copied_layers.json",
        )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    forward = torch.compile(model) if config.compile else model

    # Loss (in sgd_step), optimiser, schedule.
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = PlateauSchedule(
        config.lr, config.lr_factor, config.lr_patience, config.max_lr_reductions
    )

    # Resume: a restarted worker group or a rerun of the same run name.
    start_epoch, global_step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            weights = checkpoints.load_weights(folder)
            state = checkpoints.load_training_state(folder)
        _unwrap(model).load_state_dict(weights)
        optimiser.load_state_dict(state["optimizer"])
        schedule = PlateauSchedule(**state["schedule"])
        start_epoch = state["epoch"] + 1
        global_step = state.get("global_step", 0)
        # Metrics are logged after their checkpoint is reported: a worker that
        # died in between left them unlogged, and they are in the checkpoint.
        if rank == 0 and "metrics" in state:
            run.log_metrics_once(to_mlflow_epoch_metrics(state["metrics"]), step=global_step)
    step_log = StepLog(run, config.log_every_steps, world) if rank == 0 else None

    # Epochs.
    for epoch in range(start_epoch, config.epochs):
        if schedule.finished:
            ingest.end_training_batches()  # the stream's later epochs are not needed
            break
        for group in optimiser.param_groups:
            group["lr"] = schedule.lr
        colour_generator = _seed_everything(config.seed, epoch, rank)
        model.train()
        loss_sum, images_seen, steps, waiting = 0.0, 0, 0, 0.0
        epoch_start = time.perf_counter()
        if step_log is not None:
            step_log.start_window()
        batches = iter(
            ingest.training_batches(
                config.data,
                epoch=epoch,
                rank=rank,
                world_size=world,
                augmentation=augmentation,
                batch_size=micro_batch,
                seed=config.seed,
                decode_on=config.decode_on,
                device=device,
                cpus_per_task=config.data_cpus_per_task,
                # One stream for the run's epochs: no core waits at a boundary.
                stop_epoch=config.epochs,
                batches_per_step=accumulation,
                max_batches=None
                if config.max_steps_per_epoch is None
                else config.max_steps_per_epoch * accumulation,
            )
        )
        while config.max_steps_per_epoch is None or steps < config.max_steps_per_epoch:
            micro_batches = []
            wait_start = time.perf_counter()
            for _ in range(accumulation):
                batch = next(batches, None)
                if batch is None:
                    break
                micro_batches.append(batch)
            waited = time.perf_counter() - wait_start
            waiting += waited
            if len(micro_batches) < accumulation:
                break  # the epoch's end: its batches come in whole steps
            step_loss = sgd_step(
                model,
                forward,
                optimiser,
                micro_batches,
                augmentation=augmentation,
                stats=stats,
                generator=colour_generator,
                config=config,
                device=device,
            ).item()
            step_images = sum(len(batch["label"]) for batch in micro_batches)
            loss_sum, images_seen, steps = (
                loss_sum + step_loss,
                images_seen + step_images,
                steps + 1,
            )
            global_step += 1
            if step_log is not None:
                step_log.add(global_step, step_loss, step_images, waited, schedule.lr)
        elapsed = time.perf_counter() - epoch_start
        if step_log is not None:
            step_log.flush(global_step, schedule.lr)  # the epoch's last, partial window
            step_log.wait()

        train_loss, images_total, waiting_total, elapsed_total = _all_sum(
            [loss_sum, images_seen, waiting, elapsed], device
        )
        metrics = {
            "epoch": epoch,
            "global_step": global_step,
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
                        "global_step": global_step,
                        "seed": config.seed,
                        "metrics": metrics,
                    },
                )
                report_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=report_checkpoint)
        # After the report: a kill before it reruns the epoch, whose metrics must
        # then be logged once, by the rerun.
        # On the global step axis, beside the per-step series.
        if rank == 0:
            run.log_metrics_once(to_mlflow_epoch_metrics(metrics), step=global_step)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_with_system_metrics(loop_config: dict[str, Any]) -> None:
    """`train_loop_per_worker`, with MLflow's system metrics (CPU, memory, GPU
    where pynvml is installed) of rank 0's node logged to the run throughout."""
    import ray.train

    from pipeline import tracking

    run = tracking.Run(loop_config["run_id"], loop_config["tracking_uri"])
    rank = ray.train.get_context().get_world_rank()
    with run.system_metrics() if rank == 0 else nullcontext():
        train_loop_per_worker(loop_config)
