"""The evaluation stage's driver: the paper's test protocols over Ray, and
where their table goes.

`evaluate(models, ...)` loads every net first (`nets`), so a bad reference
fails before any Ray work, then plans the table (`plan`). `workers` Ray tasks,
one per GPU when there are GPUs, each take a share of the split's record
batches (`ingest.evaluation_dataset`'s rank and world size) and evaluate every
net on it (`worker`); the driver sums their error counts into the table
(`results`).

The table is printed, written as Markdown, CSV and JSON to `output`, and
logged to MLflow (artifacts under `evaluation/<name>/`, metrics named
`eval/<protocol>/Q<scales>/top1_error`, no run names in them): a net's rows
on its own run only when they are its full evaluation on the validation split
of its own training data (`own_rows`), and the whole table on an evaluation
run, with the data as its dataset input, unless it is one net's own record
and no run name was given. A quick `limit` check, other data or split, or an
ensemble never changes the figures on a net's run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import cluster
from pipeline.config import settings_digest
from pipeline.errors import ConfigError
from pipeline.evaluation.nets import EvaluatedModel, distinct_labels, load_model, with_mean_rgb
from pipeline.evaluation.plan import needed_views, plan_rows
from pipeline.evaluation.results import (
    EvaluationResult,
    TableRow,
    table_rows,
    write_predictions,
    write_tables,
)
from pipeline.evaluation.worker import ProgressCounter, ShareJob, ShareResult, evaluate_share
from pipeline.manifest import Manifest
from pipeline.shards import ShardStore, canonical_uri, require_folder

if TYPE_CHECKING:
    from pipeline.evaluation.config import EvaluateConfig
    from pipeline.tracking import Run

EVALUATION_STAGE = "evaluate"


def _scale_entry(entry: str | int | Sequence[int]) -> str:
    """A scale set as the config takes it: "single", "multi" or "Q1,Q2"."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, int):
        return str(entry)
    return ",".join(str(int(q)) for q in entry)


def evaluate(
    models: str | Sequence[str],
    *,
    data: str = "",
    protocols: Sequence[str] | None = None,
    scales: Sequence[str | int | Sequence[int]] | None = None,
    ensemble: bool = False,
    limit: int | None = None,
    output: str | None = None,
    address: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> EvaluationResult:
    """Evaluate `models` (MLflow run ids, registered models, checkpoint paths,
    torchvision .pth files) with `protocols` at each scale set of `scales`
    ("single", "multi", or explicit Q like (256, 384, 512)); with `ensemble`,
    also the average of all the nets' posteriors. Other `settings` are
    `EvaluateConfig` fields (split, grid, batch_size, workers, use_gpu,
    tracking_uri, run_name ...). Protocols and scale sets default to all."""
    from pipeline.evaluation.config import EVALUATION_PROTOCOLS, SCALE_SETS, EvaluateConfig

    config = EvaluateConfig(
        models=(models,) if isinstance(models, str) else tuple(models),
        data=data,
        protocols=tuple(protocols or EVALUATION_PROTOCOLS),
        scales=tuple(_scale_entry(s) for s in scales or SCALE_SETS),
        ensemble=ensemble,
        limit=limit,
        output=output,
        **settings,
    )
    return run_evaluation(config, address=address, progress=progress)


def evaluation_name(config: EvaluateConfig, data: str) -> str:
    """The run name, else one derived from the settings that change the
    figures (with `data` resolved): a rerun with other hardware settings
    continues the same evaluation run."""
    if config.run_name:
        return config.run_name
    fields = config.fingerprint_dict() | {"data": data}
    return f"evaluate-{settings_digest(fields)[:10]}"


def _check_data(
    data: str, split: str, models: Sequence[EvaluatedModel]
) -> tuple[Manifest, int, int]:
    """The manifest, the split's image count and its record batches (the most
    workers can share)."""
    from pipeline.ingest import record_batch_pieces

    store = ShardStore(data)
    manifest = store.manifest()  # FileNotFoundError names the folder
    if split not in manifest.splits or manifest.splits[split].rows == 0:
        raise ConfigError(f"data {data!r} has no {split} images")
    for model in models:
        if model.architecture.num_classes != len(manifest.classes):
            raise ConfigError(
                f"{model.label} has {model.architecture.num_classes} classes, "
                f"data {data!r} has {len(manifest.classes)}"
            )
    return manifest, manifest.splits[split].rows, len(record_batch_pieces(store.shards(split)))


def _limits(limit: int | None, workers: int) -> list[int | None]:
    if limit is None:
        return [None] * workers
    return [limit // workers + (rank < limit % workers) for rank in range(workers)]


def _gather(tasks: list, counter, total: int, progress: bool) -> list[ShareResult]:
    import ray

    if counter is None:
        return ray.get(tasks)
    from tqdm import tqdm

    pending = list(tasks)
    with tqdm(total=total, unit="img", desc="evaluate", disable=not progress) as bar:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            bar.update(ray.get(counter.value.remote()) - bar.n)
    return ray.get(tasks)


def run_evaluation(
    config: EvaluateConfig, *, address: str | None = None, progress: bool = True
) -> EvaluationResult:
    """Run the evaluation `config` describes (see the module docstring)."""
    import ray

    from pipeline import tracking

    started = time.perf_counter()
    if config.output:
        require_folder(config.output, "output")
    uri = tracking.tracking_uri(config.tracking_uri)
    loaded = [load_model(reference, uri) for reference in config.models]
    data = config.data or next((m.data for m, _ in loaded if m.data), "")
    if not data:
        raise ConfigError("data must name a prepared dataset (no model records its training data)")
    data = canonical_uri(data)  # the Ray tasks do not share this process's working folder
    manifest, split_rows, pieces = _check_data(data, config.split, [m for m, _ in loaded])
    models = distinct_labels([with_mean_rgb(model, data) for model, _ in loaded])
    rows = plan_rows(models, config)
    manifest.require_scale(max(q for row in rows for qs in row.scales for q in qs), "scales", data)
    passes = len(needed_views(rows))
    images = min(split_rows, config.limit or split_rows)

    cluster.connect(address)
    resources = ray.cluster_resources()
    use_gpu = config.use_gpu if config.use_gpu is not None else resources.get("GPU", 0) > 0
    workers = config.workers or (max(1, int(resources.get("GPU", 0))) if use_gpu else 1)
    workers = min(workers, pieces)  # a worker's share is whole record batches
    cpus_needed = workers * config.cpus_per_worker + config.data_cpus_per_task
    if resources.get("CPU", 0) < cpus_needed:
        raise ConfigError(
            f"workers must leave CPUs for decoding: {workers} x cpus_per_worker "
            f"{config.cpus_per_worker} + data_cpus_per_task {config.data_cpus_per_task} = "
            f"{cpus_needed} > the cluster's {resources.get('CPU', 0):g} CPUs"
        )

    weights = [ray.put(state_dict) for _, state_dict in loaded]
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote() if progress else None
    remote_share = ray.remote(evaluate_share).options(
        num_cpus=config.cpus_per_worker, num_gpus=1 if use_gpu else 0
    )
    tasks = [
        remote_share.remote(
            ShareJob(
                data=data,
                split=config.split,
                models=models,
                rows=rows,
                grid=config.grid,
                batch_size=config.batch_size,
                dense_batch_size=config.dense_batch_size,
                bf16=config.bf16,
                use_gpu=use_gpu,
                data_cpus_per_task=config.data_cpus_per_task,
                limit=limit,
                predictions=config.predictions,
                dense_ceil_mode=config.dense_ceil_mode,
                dense_pooling=config.dense_pooling,
                dense_region=config.dense_region,
            ),
            rank,
            workers,
            weights,
            counter,
        )
        for rank, limit in enumerate(_limits(config.limit, workers))
    ]
    shares = _gather(tasks, counter, images * passes, progress)
    counts = [
        tuple(int(sum(share.counts[r][k] for share in shares)) for k in range(3))
        for r in range(len(rows))
    ]
    table = table_rows(models, rows, counts)

    name = evaluation_name(config, data)
    output = Path(config.output or Path("evaluations") / name)
    result = EvaluationResult(
        name=name,
        rows=table,
        models=models,
        data=data,
        images=sum(share.images for share in shares),
        output=output,
        files={},
        seconds=time.perf_counter() - started,
        workers=workers,
        dense_images=sum(share.dense_images for share in shares),
        dense_passes=sum(share.dense_passes for share in shares),
    )
    result.files = write_tables(output, result, config)
    if config.predictions:
        result.files["predictions"] = write_predictions(
            output / "predictions.parquet", table, shares
        )
    _log(result, config, uri)
    return result


def _metrics(rows: Sequence[TableRow], nets: Sequence[EvaluatedModel]) -> dict[str, float]:
    """The rows as `eval/<protocol>/Q<scales>/top1_error` (and top5): keys with
    no run name, so one protocol compares across runs. Where several nets share
    a table, their own rows are under `eval/net<i>/...` (i: the net's place in
    `models`, from 1) and the ensemble's, the table's subject, keep the short key."""
    labels = [net.label for net in nets]
    metrics = {}
    for row in rows:
        prefix = row.metric_prefix()
        if len(labels) > 1 and row.model in labels:
            prefix = prefix.replace("eval/", f"eval/net{labels.index(row.model) + 1}/", 1)
        metrics[f"{prefix}/top1_error"] = row.top1_error / 100
        metrics[f"{prefix}/top5_error"] = row.top5_error / 100
    return metrics


def _log_rows(
    run: Run,
    rows: Sequence[TableRow],
    result: EvaluationResult,
    config: EvaluateConfig,
    nets: Sequence[EvaluatedModel],
) -> None:
    run.log_metrics_once(_metrics(rows, nets), step=0)  # an evaluation again logs nothing twice
    with tempfile.TemporaryDirectory(prefix="vggpipe-evaluation-") as folder:
        files = write_tables(Path(folder), result, config, rows)
        for path in files.values():
            run.log_artifact(str(path), f"evaluation/{result.name}")


def own_rows(model: EvaluatedModel, result: EvaluationResult, config: EvaluateConfig) -> list:
    """The rows that are `model`'s own record, logged on its training run: those
    of a full evaluation (no limit) of the validation split of the data it was
    trained on, of the net alone. Anything else (other data or split, a limit,
    an ensemble) is logged on the evaluation run only, so a quick check never
    stands in for a net's figures."""
    if (
        model.run_id is None
        or config.limit is not None
        or config.split != "val"
        or not model.data
        or canonical_uri(model.data) != result.data
    ):
        return []
    return [row for row in result.rows if row.run_id == model.run_id and row.model == model.label]


def _log(result: EvaluationResult, config: EvaluateConfig, uri: str) -> None:
    """Each net's own rows (`own_rows`) on its run; the whole table on an
    evaluation run, unless the table is one net's own record and no run name
    was given."""
    import dataclasses

    from pipeline import tracking
    from pipeline.tracking_context import EVALUATION

    owned = 0
    for model in result.models:
        rows = own_rows(model, result, config)
        if rows:
            _log_rows(tracking.Run(model.run_id, uri), rows, result, config, [model])
            result.run_ids.append(model.run_id)
            owned += len(rows)
    if len(result.models) == 1 and owned == len(result.rows) and not config.run_name:
        return  # a named evaluation (a workflow's stage) gets its own run all the same
    run = tracking.start_run(
        result.name,
        config.experiment,
        uri=uri,
        parent_run_id=config.parent_run_id,
        tags={
            tracking.STAGE_TAG: EVALUATION_STAGE,
            "vggpipe.evaluated_models": ", ".join(config.models)[:5000],
        },
        # The data as resolved (a model's training data when the config names none);
        # other settings under this run name are refused before anything is written.
        config=dataclasses.replace(config, data=result.data),
    )
    try:
        run.log_text(config.to_json(), f"evaluation/{result.name}/config.json")
        run.log_dataset(result.data, EVALUATION)
        _log_rows(run, result.rows, result, config, result.models)
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    result.evaluation_run_id = run.run_id
    result.run_ids.append(run.run_id)


__all__ = ["EVALUATION_STAGE", "evaluate", "evaluation_name", "run_evaluation"]
