"""The evaluation stage: the paper's test protocols over Ray, and its tables.

`evaluate(models, ...)` runs in the driver. It loads every net first, so a bad
reference fails before any Ray work, then plans the table: for each net (and
for the ensemble of all of them, if asked) one row per scale set and protocol,
laid out like the paper's Tables 3 to 6 (config, training S, test Q, protocol,
top-1 and top-5 error). `workers` Ray tasks, one per GPU when there are GPUs,
each take a share of the split's record batches (`ingest.evaluation_dataset`'s
rank and world size) and evaluate every net on it.

Inside a worker each image is decoded once per test scale Q, as the whole
image with its shorter side Q; the centre crop and the multi-crop grid are cut
from that array on the worker, so a 50-crop tensor per image never crosses the
object store. Dense evaluation batches images of equal rescaled size
(`vgg.evaluation.SizeBuckets`) on a GPU; a CPU worker takes them one at a
time, which measured faster there (`benchmarks/evaluate.py`). A worker keeps
its images' posteriors for every (net, Q, view), combines them per row (views,
then scales, then nets) and returns only error counts, which the driver sums:
the posteriors of 50,000 images never travel.

The table is printed, written as Markdown, CSV and JSON to `output`, and
logged to MLflow (artifacts under `evaluation/<name>/`, metrics named
`eval/<protocol>/Q<scales>/top1_error`): on each net's own run for its rows,
and the whole table on a new evaluation run when there is an ensemble, more
than one net, or a net with no run (a torchvision file).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.shards import ShardStore, canonical_uri

# torch, vgg, MLflow and Ray load when a function needs them, so that
# `from pipeline import evaluate` stays light (see pipeline/__init__.py).
if TYPE_CHECKING:
    import torch

    from pipeline.evaluation.config import EvaluateConfig
    from vgg.evaluation import Architecture
    from vgg.transforms import PixelStatistics

# The views each protocol averages; a view's posteriors are computed once per
# (net, Q) and shared by every row that needs them.
PROTOCOL_VIEWS: dict[str, tuple[str, ...]] = {
    "centre": ("centre",),
    "dense": ("dense",),
    "multi-crop": ("multi-crop",),
    "dense+multi-crop": ("dense", "multi-crop"),
}
# torchvision's weights expect inputs divided by these (0-255 units) after the
# mean subtraction; its models were trained with RandomResizedCrop, which has
# no S, and its own evaluation resizes to 256, so that is taken as S.
TORCHVISION_STD_RGB = (58.395, 57.12, 57.375)
TORCHVISION_ASSUMED_S = 256
STATE_DICT_SUFFIXES = (".pth", ".pt")
EVALUATION_STAGE = "evaluate"
ROWS_PER_READ = 16  # whole images per Ray Data batch a worker takes


# ---------------------------------------------------------------------------
# The nets: any reference to weights, as an architecture plus a state dict


@dataclass(frozen=True)
class EvaluatedModel:
    """One net under evaluation; its weights travel separately (object store)."""

    label: str  # its name in the table
    reference: str  # as the user gave it
    source: str  # "run", "registered", "checkpoint" or "torchvision"
    architecture: Architecture
    train_scale: tuple[int, int] | None  # (Smin, Smax); None: not known (torchvision)
    mean_rgb: tuple[float, float, float]  # subtracted from 0-255 pixels
    std_rgb: tuple[float, float, float] | None  # then divided by (torchvision's weights)
    run_id: str | None  # MLflow run its results are logged on (None: the evaluation run)
    data: str | None  # the prepared dataset it was trained on, when known

    @property
    def scale_text(self) -> str:
        """Training S as the paper's tables write it: 256, or [256;512] when jittered."""
        if self.train_scale is None:
            return "-"
        low, high = self.train_scale
        return str(low) if low == high else f"[{low};{high}]"


def _statistics(*datasets: str | None) -> PixelStatistics:
    """The first readable dataset's pixel statistics (the net's training data,
    else the evaluated data)."""
    from pipeline.ingest import pixel_statistics

    errors = []
    for dataset in datasets:
        if not dataset:
            continue
        try:
            return pixel_statistics(dataset)
        except (OSError, ValueError) as exc:
            errors.append(f"{dataset}: {exc}")
    raise ValueError("no pixel statistics for the mean RGB: " + "; ".join(errors))


def _run_for_checkpoint(path: str, config, uri: str) -> str | None:
    """The training run that wrote checkpoint `path`: the run with the config's
    name whose best or final checkpoint sits in the same Ray Train run folder."""
    from pipeline import tracking

    run = tracking.find_run(config.name, config.experiment, uri)
    if run is None:
        return None
    folder = os.path.dirname(os.path.normpath(path))
    for tag in (tracking.BEST_CHECKPOINT_TAG, tracking.FINAL_CHECKPOINT_TAG):
        tagged = run.data.tags.get(tag)
        if tagged and os.path.dirname(os.path.normpath(tagged)) == folder:
            return run.info.run_id
    return None


def _from_checkpoint(
    reference: str, path: str, source: str, run_id: str | None, label: str | None, uri: str
) -> tuple[EvaluatedModel, dict[str, torch.Tensor]]:
    from pipeline import checkpoints
    from vgg.evaluation import Architecture

    loaded = checkpoints.load(path)
    config = loaded.config
    if run_id is None:
        run_id = _run_for_checkpoint(path, config, uri)
    architecture = Architecture(config.config, config.width, loaded.num_classes, config.crop_size)
    model = EvaluatedModel(
        label=label or config.name,
        reference=reference,
        source=source,
        architecture=architecture,
        train_scale=(config.scale_min, config.scale_max),
        mean_rgb=(0.0, 0.0, 0.0),  # set once the evaluated data is known
        std_rgb=None,
        run_id=run_id,
        data=config.data or None,
    )
    return model, loaded.model.state_dict()


def _from_torchvision_file(reference: str) -> tuple[EvaluatedModel, dict[str, torch.Tensor]]:
    import torch

    from vgg.evaluation import architecture_of, unallocated_vgg
    from vgg.interop import TORCHVISION_CONFIGS, load_torchvision_state_dict
    from vgg.transforms import PixelStatistics

    state_dict = torch.load(reference, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{reference} holds a {type(state_dict).__name__}, not a state dict")
    architecture = architecture_of(state_dict)
    if architecture.config in TORCHVISION_CONFIGS:
        # torchvision's own weights go through the interop, which checks them by
        # name and shape; the net is allocated, not initialised (to_empty).
        model = unallocated_vgg(architecture).to_empty(device="cpu")
        model = load_torchvision_state_dict(model, state_dict)
        state_dict = model.state_dict()
    stats = PixelStatistics.imagenet()
    return (
        EvaluatedModel(
            label=Path(reference).stem,
            reference=reference,
            source="torchvision",
            architecture=architecture,
            train_scale=None,
            mean_rgb=stats.mean_rgb,
            std_rgb=TORCHVISION_STD_RGB,
            run_id=None,
            data=None,
        ),
        state_dict,
    )


def _from_registry(reference: str, version, uri: str) -> tuple[EvaluatedModel, dict]:
    from pipeline import tracking
    from vgg.evaluation import architecture_of

    state_dict = tracking.load_registered_state_dict(version.name, version.version, uri)
    params = tracking.get_run(version.run_id, uri).data.params if version.run_id else {}
    train_scale = None
    if params.get("scale_min") and params.get("scale_max"):
        train_scale = (int(params["scale_min"]), int(params["scale_max"]))
    model = EvaluatedModel(
        label=f"{version.name}/v{version.version}",
        reference=reference,
        source="registered",
        architecture=architecture_of(state_dict),
        train_scale=train_scale,
        mean_rgb=(0.0, 0.0, 0.0),
        std_rgb=None,
        run_id=version.run_id or None,
        data=params.get("data") or None,
    )
    return model, state_dict


def load_model(reference: str, uri: str) -> tuple[EvaluatedModel, dict[str, torch.Tensor]]:
    """A net from any reference the stage takes, and its weights on the CPU:
    a torchvision state dict file (.pth, .pt), an MLflow run id (its best
    checkpoint), a checkpoint folder or URI, or a registered model
    ("models:/name/version", "models:/name@alias", "name/version")."""
    from pipeline import checkpoints, tracking

    exists = os.path.exists(reference)
    if exists and os.path.isfile(reference) and reference.endswith(STATE_DICT_SUFFIXES):
        return _from_torchvision_file(reference)
    if checkpoints.RUN_ID.match(reference) and not exists:
        run = tracking.get_run_or_none(reference, uri)
        if run is None:
            raise FileNotFoundError(f"no MLflow run {reference} in {uri}")
        path = checkpoints.resolve(reference, uri)
        label = run.data.tags.get("mlflow.runName") or reference[:8]
        return _from_checkpoint(reference, path, "run", reference, label, uri)
    if exists or "://" in reference:
        # Ray's Checkpoint takes absolute paths or URIs only.
        path = os.path.abspath(reference) if exists else reference
        return _from_checkpoint(reference, path, "checkpoint", None, None, uri)
    version = tracking.registered_model_version(reference, uri)
    if version is not None:
        return _from_registry(reference, version, uri)
    raise FileNotFoundError(
        f"{reference!r} is not a state dict file, an MLflow run id, a checkpoint or a "
        f"registered model in {uri}"
    )


# ---------------------------------------------------------------------------
# The plan: rows of the table, and the (net, Q, view) posteriors they need


@dataclass(frozen=True)
class PlannedRow:
    members: tuple[int, ...]  # indices of the nets averaged (one, or the ensemble)
    scales: tuple[tuple[int, ...], ...]  # each member's test scales Q
    scale_set: str  # "single", "multi" or "explicit"
    protocol: str


def scales_for(
    model: EvaluatedModel, scale_set: str | tuple[int, ...], step: int
) -> tuple[int, ...]:
    """The Q of `scale_set` for `model`, derived from its training S as
    PAPER.md section 3 says (or given explicitly)."""
    from vgg.evaluation import multi_test_scales, single_test_scale

    if isinstance(scale_set, tuple):
        return scale_set
    low, high = model.train_scale or (TORCHVISION_ASSUMED_S, TORCHVISION_ASSUMED_S)
    if scale_set == "single":
        return (single_test_scale(low, high),)
    return multi_test_scales(low, high, step=step, crop_size=model.architecture.crop_size)


def plan_rows(models: Sequence[EvaluatedModel], config: EvaluateConfig) -> list[PlannedRow]:
    """Every net alone, then the ensemble if asked: one row per scale set and
    protocol, in the order of `config.scales` and `config.protocols`."""
    from pipeline.config import ConfigError

    groups = [(i,) for i in range(len(models))]
    if config.ensemble:
        groups.append(tuple(range(len(models))))
    rows = []
    for members in groups:
        for scale_set in config.scale_sets:
            scales = tuple(scales_for(models[m], scale_set, config.scale_step) for m in members)
            for member, qs in zip(members, scales, strict=True):
                crop = models[member].architecture.crop_size
                if min(qs) < crop:
                    raise ConfigError(
                        f"scales must be >= the crop size ({crop}) of {models[member].label}; "
                        f"got {','.join(map(str, qs))}"
                    )
            name = scale_set if isinstance(scale_set, str) else "explicit"
            rows.extend(PlannedRow(members, scales, name, p) for p in config.protocols)
    return rows


def needed_views(rows: Iterable[PlannedRow]) -> dict[int, dict[int, set[str]]]:
    """Q -> net -> the views whose posteriors the rows need at that Q."""
    needs: dict[int, dict[int, set[str]]] = {}
    for row in rows:
        for member, scales in zip(row.members, row.scales, strict=True):
            for q in scales:
                needs.setdefault(q, {}).setdefault(member, set()).update(
                    PROTOCOL_VIEWS[row.protocol]
                )
    return needs


# ---------------------------------------------------------------------------
# A worker: its share of the images, every net, every needed view


@dataclass
class ShareJob:
    """Everything a worker needs but the weights (plain values: it is pickled)."""

    data: str
    split: str
    models: list[EvaluatedModel]
    rows: list[PlannedRow]
    grid: int
    batch_size: int
    dense_batch_size: int | None
    bf16: bool
    use_gpu: bool
    data_cpus_per_task: float
    limit: int | None  # this worker's image limit
    predictions: bool = False  # return each image's top-5 classes per row


@dataclass
class ShareResult:
    counts: list[tuple[int, int, int]]  # per row: top-1 errors, top-5 errors, images
    images: int
    dense_images: int = 0  # dense evaluation: images (per net and Q) ...
    dense_passes: int = 0  # ... in this many forward passes (bucketing's effect)
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)  # with `predictions`: the images, sorted
    labels: list[int] = field(default_factory=list)
    top5: list[np.ndarray] = field(default_factory=list)  # per row: (images, 5) classes


class _Posteriors:
    """Each (net, Q, view)'s posteriors by image key, as a worker collects them."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, int, str], dict[str, np.ndarray]] = {}
        self.labels: dict[str, int] = {}

    def add(self, model: int, scale: int, view: str, keys: Sequence[str], posteriors) -> None:
        store = self.by_key.setdefault((model, scale, view), {})
        for key, row in zip(keys, posteriors.cpu().numpy(), strict=True):
            store[key] = row

    def matrix(self, model: int, scale: int, view: str, keys: Sequence[str]) -> torch.Tensor:
        import torch

        store = self.by_key[(model, scale, view)]
        return torch.from_numpy(np.stack([store[k] for k in keys]))


def _centre_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
    """The centre crop of a rescaled image: `vgg.transforms.center_crop_box`'s offsets."""
    top = (image.shape[0] - crop_size) // 2
    left = (image.shape[1] - crop_size) // 2
    return image[top : top + crop_size, left : left + crop_size]


def _as_input(images: np.ndarray, model: EvaluatedModel, device: torch.device) -> torch.Tensor:
    """uint8 (..., H, W, 3) to the net's float NCHW input on `device`, keeping
    the leading dimensions; the uint8 array is what crosses to the device."""
    import torch

    from vgg.transforms import to_model_input

    lead = images.shape[:-3]
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    x = to_model_input(batch.reshape(-1, *images.shape[-3:]), model.mean_rgb, model.std_rgb)
    return x.view(*lead, *x.shape[1:])


class _ShareEvaluator:
    """The nets of one worker on its device, and the posteriors they produce."""

    def __init__(self, job: ShareJob, state_dicts: Sequence[dict[str, torch.Tensor]]) -> None:
        import torch

        from vgg.dense import to_fully_convolutional
        from vgg.evaluation import build_from_state_dict

        self.job = job
        self.device = torch.device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if job.bf16 else nullcontext()
        )
        self.nets = [
            build_from_state_dict(weights, model.architecture).to(self.device)
            for weights, model in zip(state_dicts, job.models, strict=True)
        ]
        self.needs = needed_views(job.rows)
        self.dense_nets = {
            i: to_fully_convolutional(self.nets[i])
            for views in self.needs.values()
            for i, wanted in views.items()
            if "dense" in wanted
        }
        self.collected = _Posteriors()
        self.dense_images = self.dense_passes = 0
        # On a GPU a whole image goes in with its flipped copy: half a batch of
        # images. On a CPU batching whole images measured no faster (see config).
        on_gpu = self.device.type == "cuda"
        self.dense_batch_size = job.dense_batch_size or (
            max(1, job.batch_size // 2) if on_gpu else 1
        )

    def centre(self, i: int, scale: int, keys: list[str], images: list[np.ndarray]) -> None:
        from vgg.evaluation import crop_posteriors

        model = self.job.models[i]
        crop = model.architecture.crop_size
        crops = _as_input(np.stack([_centre_crop(im, crop) for im in images]), model, self.device)
        with self.autocast:
            posteriors = crop_posteriors(
                self.nets[i], crops[:, None], batch_size=self.job.batch_size
            )
        self.collected.add(i, scale, "centre", keys, posteriors)

    def multi_crop(self, i: int, scale: int, keys: list[str], images: list[np.ndarray]) -> None:
        from vgg.evaluation import crop_posteriors
        from vgg.transforms import multi_crop

        model, grid = self.job.models[i], self.job.grid
        # As many images at once as fill a forward pass with their 2 * grid^2 crops.
        step = max(1, self.job.batch_size // (2 * grid * grid))
        for first in range(0, len(images), step):
            chunk = images[first : first + step]
            crops = np.stack([multi_crop(im, model.architecture.crop_size, grid) for im in chunk])
            with self.autocast:
                posteriors = crop_posteriors(
                    self.nets[i],
                    _as_input(crops, model, self.device),
                    batch_size=self.job.batch_size,
                )
            self.collected.add(i, scale, "multi-crop", keys[first : first + step], posteriors)

    def dense(self, models: list[int], scale: int, bucket) -> None:
        from vgg.evaluation import dense_posteriors

        for i in models:
            x = _as_input(bucket.stacked(), self.job.models[i], self.device)
            with self.autocast:
                posteriors = dense_posteriors(self.dense_nets[i], x)
            self.collected.add(i, scale, "dense", bucket.keys, posteriors)
            self.dense_images += len(bucket.keys)
            self.dense_passes += 1

    def one_scale(self, scale: int, dataset, progress) -> None:
        """Every image of `dataset` (whole, rescaled to `scale`) through every
        net and view that the rows need at this scale."""
        from vgg.evaluation import SizeBuckets

        views_by_model = self.needs[scale]
        dense_models = [i for i, views in views_by_model.items() if "dense" in views]
        buckets = SizeBuckets(self.dense_batch_size)
        for batch in dataset.iter_batches(batch_size=ROWS_PER_READ, batch_format="numpy"):
            keys = [str(key) for key in batch["key"]]
            self.collected.labels.update(zip(keys, (int(x) for x in batch["label"]), strict=True))
            images = list(batch["image"])
            for i, views in views_by_model.items():
                if "centre" in views:
                    self.centre(i, scale, keys, images)
                if "multi-crop" in views:
                    self.multi_crop(i, scale, keys, images)
            if dense_models:
                for key, image in zip(keys, images, strict=True):
                    for bucket in buckets.add(key, image):
                        self.dense(dense_models, scale, bucket)
            if progress is not None:
                progress.add.remote(len(keys))
        for bucket in buckets.drain():
            self.dense(dense_models, scale, bucket)

    def result(self, seconds: float) -> ShareResult:
        """Each row's error counts on this worker's images: its views averaged,
        then its scales, then its nets."""
        import torch

        from vgg.evaluation import average_posteriors, top_k_errors

        keys = sorted(self.collected.labels)
        result = ShareResult([], len(keys), self.dense_images, self.dense_passes, seconds)
        if not keys:
            result.counts = [(0, 0, 0) for _ in self.job.rows]
            return result
        labels = torch.tensor([self.collected.labels[k] for k in keys])
        if self.job.predictions:
            result.keys, result.labels = keys, labels.tolist()
        matrices: dict[tuple[int, int, str], torch.Tensor] = {}

        def matrix(i: int, q: int, view: str) -> torch.Tensor:
            if (i, q, view) not in matrices:
                matrices[(i, q, view)] = self.collected.matrix(i, q, view, keys)
            return matrices[(i, q, view)]

        for row in self.job.rows:
            views = PROTOCOL_VIEWS[row.protocol]
            members = [
                average_posteriors(
                    [average_posteriors([matrix(i, q, v) for v in views]) for q in scales]
                )
                for i, scales in zip(row.members, row.scales, strict=True)
            ]
            posteriors = average_posteriors(members)
            errors = top_k_errors(posteriors, labels)
            result.counts.append((errors[1], errors[5], len(keys)))
            if self.job.predictions:
                top = posteriors.topk(min(5, posteriors.shape[1]), dim=1).indices
                result.top5.append(top.numpy().astype(np.int32))
        return result


def evaluate_share(
    job: ShareJob,
    rank: int,
    world_size: int,
    state_dicts: Sequence[dict[str, torch.Tensor]],
    progress=None,
) -> ShareResult:
    """Worker `rank`'s share: every needed (net, Q, view), then the rows' error
    counts on its images. Runs in a Ray task (or in a plain process)."""
    import ray
    import ray.data
    import torch

    from pipeline import ingest

    start = time.perf_counter()
    # Refs inside a list are not resolved by Ray; plain dicts pass through.
    state_dicts = [ray.get(w) if isinstance(w, ray.ObjectRef) else w for w in state_dicts]
    evaluator = _ShareEvaluator(job, state_dicts)
    # The same rows in the same order on every pass over the shards, so that
    # `limit` takes the same images at every Q.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    with torch.inference_mode():
        for scale in sorted(evaluator.needs):
            dataset = ingest.evaluation_dataset(
                job.data,
                scale=scale,
                view="dense",  # whole images: the centre and grid crops are cut here
                split=job.split,
                crop_size=min(m.architecture.crop_size for m in job.models),
                grid=job.grid,
                rank=rank,
                world_size=world_size,
                cpus_per_task=job.data_cpus_per_task,
            )
            if job.limit is not None:
                dataset = dataset.limit(job.limit)
            evaluator.one_scale(scale, dataset, progress)
    return evaluator.result(time.perf_counter() - start)


class ProgressCounter:
    """A Ray actor the workers tell how many images they have finished."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count

    def value(self) -> int:
        return self.done


# ---------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class TableRow:
    """One line of the paper's tables: errors in percent, as it prints them."""

    model: str
    config: str
    train_scale: str  # S: "256" or "[256;512]"; "-" when unknown
    test_scales: str  # Q: "256" or "256,384,512"
    protocol: str
    top1_error: float  # percent
    top5_error: float  # percent
    images: int
    scale_set: str  # "single", "multi" or "explicit"
    run_id: str | None = None  # where its metrics went

    def metric_prefix(self) -> str:
        """`eval/<protocol>/Q<scales>`: MLflow names allow no '+' or ','."""
        protocol = self.protocol.replace("+", "_and_")
        return f"eval/{protocol}/Q{self.test_scales.replace(',', '-').replace(' / ', '_')}"


TABLE_COLUMNS = (
    ("model", "model"),
    ("config", "config"),
    ("train_scale", "train S"),
    ("test_scales", "test Q"),
    ("protocol", "protocol"),
    ("top1_error", "top-1 err. (%)"),
    ("top5_error", "top-5 err. (%)"),
    ("images", "images"),
)


def _joined(values: Sequence[str]) -> str:
    """One value when the members agree, else each member's, as the paper's
    Table 3 writes '256 / 384 / [256;512]'."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def table_rows(
    models: Sequence[EvaluatedModel],
    rows: Sequence[PlannedRow],
    counts: Sequence[tuple[int, int, int]],
) -> list[TableRow]:
    table = []
    for row, (top1, top5, images) in zip(rows, counts, strict=True):
        members = [models[i] for i in row.members]
        table.append(
            TableRow(
                model=" + ".join(m.label for m in members),
                config="+".join(m.architecture.config for m in members),
                train_scale=_joined([m.scale_text for m in members]),
                test_scales=_joined([",".join(map(str, qs)) for qs in row.scales]),
                protocol=row.protocol,
                top1_error=100.0 * top1 / images if images else float("nan"),
                top5_error=100.0 * top5 / images if images else float("nan"),
                images=images,
                scale_set=row.scale_set,
                run_id=members[0].run_id if len(members) == 1 else None,
            )
        )
    return table


def _cell(row: TableRow, name: str) -> str:
    value = getattr(row, name)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[TableRow]) -> str:
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = (
        "|"
        + "|".join("---" if n in ("model", "protocol") else "---:" for n, _ in TABLE_COLUMNS)
        + "|"
    )
    lines = [header, rule]
    lines += ["| " + " | ".join(_cell(row, n) for n, _ in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[TableRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([f.name for f in dataclasses.fields(TableRow)])
    for row in rows:
        writer.writerow(
            [
                f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)
                for v in dataclasses.astuple(row)
            ]
        )
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# The driver


@dataclass
class EvaluationResult:
    """What `evaluate` returns: the table, where it was written and logged."""

    name: str  # the evaluation's name: its output folder and MLflow artifact folder
    rows: list[TableRow]
    models: list[EvaluatedModel]
    data: str
    images: int  # distinct images evaluated (each through every net, Q and view)
    output: Path
    files: dict[str, Path]  # "markdown", "csv", "json"
    run_ids: list[str] = field(default_factory=list)  # runs the results were logged on
    evaluation_run_id: str | None = None  # the new evaluation run, if one was made
    seconds: float = 0.0
    workers: int = 1
    dense_images: int = 0
    dense_passes: int = 0

    def markdown(self) -> str:
        return markdown_table(self.rows)

    def summary(self) -> str:
        lines = [
            f"Evaluated {len(self.models)} net(s) on {self.images:,} images of {self.data} "
            f"in {self.seconds:.1f} s ({self.workers} worker(s)).",
            "",
            self.markdown(),
        ]
        if self.dense_passes:
            lines.append(
                f"Dense evaluation: {self.dense_images:,} images in {self.dense_passes:,} forward "
                f"passes (images of equal rescaled size batched together: "
                f"{self.dense_images / self.dense_passes:.1f} per pass)."
            )
        lines += [f"  {kind:11s} {path}" for kind, path in self.files.items()]
        if self.run_ids:
            lines.append("Logged to MLflow run(s) " + ", ".join(self.run_ids))
        return "\n".join(lines)


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


# Fields that change the figures; the others (hardware, paths) do not, so a
# rerun with more workers continues the same evaluation run.
RESULT_FIELDS = (
    "data",
    "split",
    "protocols",
    "scales",
    "scale_step",
    "ensemble",
    "grid",
    "limit",
    "bf16",
)


def evaluation_name(config: EvaluateConfig, data: str) -> str:
    if config.run_name:
        return config.run_name
    fields = {name: getattr(config, name) for name in RESULT_FIELDS} | {
        "models": config.models,
        "data": data,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return f"evaluate-{digest[:10]}"


def _check_data(data: str, split: str, models: Sequence[EvaluatedModel]) -> tuple[int, int]:
    """The split's image count and record batches (the most workers can share)."""
    from pipeline.config import ConfigError
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
    return manifest.splits[split].rows, len(record_batch_pieces(store.shards(split)))


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
    from pipeline.config import ConfigError

    started = time.perf_counter()
    uri = tracking.tracking_uri(config.tracking_uri)
    loaded = [load_model(reference, uri) for reference in config.models]
    data = config.data or next((m.data for m, _ in loaded if m.data), "")
    if not data:
        raise ConfigError("data must name a prepared dataset (no model records its training data)")
    data = canonical_uri(data)  # the Ray tasks do not share this process's working folder
    split_rows, pieces = _check_data(data, config.split, [m for m, _ in loaded])
    models: list[EvaluatedModel] = []
    for model, _ in loaded:
        if model.std_rgb is None:  # trained here: the mean RGB of its training data
            stats = _statistics(model.data, data)
            model = dataclasses.replace(model, mean_rgb=tuple(stats.mean_rgb))
        models.append(model)
    _unique_labels(models)
    rows = plan_rows(models, config)
    passes = len(needed_views(rows))
    images = min(split_rows, config.limit or split_rows)

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
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


def write_predictions(path: Path, rows: Sequence[TableRow], shares: Sequence[ShareResult]) -> Path:
    """Every image's top-5 classes under every row of the table, one line per
    (image, row): for error analysis, and for comparing nets image by image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {
        k: [] for k in ("key", "label", "row", "model", "test_scales", "protocol", "top5")
    }
    for share in shares:
        for index, row in enumerate(rows):
            columns["key"] += share.keys
            columns["label"] += share.labels
            columns["row"] += [index] * len(share.keys)
            columns["model"] += [row.model] * len(share.keys)
            columns["test_scales"] += [row.test_scales] * len(share.keys)
            columns["protocol"] += [row.protocol] * len(share.keys)
            columns["top5"] += share.top5[index].tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _unique_labels(models: list[EvaluatedModel]) -> None:
    seen: dict[str, int] = {}
    for index, model in enumerate(models):
        count = seen.get(model.label, 0)
        seen[model.label] = count + 1
        if count:
            models[index] = dataclasses.replace(model, label=f"{model.label}#{count + 1}")


def _json_document(
    result: EvaluationResult, config: EvaluateConfig, rows: Sequence[TableRow]
) -> dict:
    return {
        "name": result.name,
        "data": result.data,
        "split": config.split,
        "images": result.images,
        "config": config.to_dict(),
        "models": [
            {
                "label": m.label,
                "reference": m.reference,
                "source": m.source,
                "run_id": m.run_id,
                **dataclasses.asdict(m.architecture),
                "train_scale": m.scale_text,
            }
            for m in result.models
        ],
        "rows": [dataclasses.asdict(row) for row in rows],
        "seconds": result.seconds,
        "dense_images": result.dense_images,
        "dense_passes": result.dense_passes,
    }


def write_tables(
    folder: Path,
    result: EvaluationResult,
    config: EvaluateConfig,
    rows: Sequence[TableRow] | None = None,
) -> dict[str, Path]:
    """The table as table.md, table.csv and table.json in `folder`."""
    rows = result.rows if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": folder / "table.md",
        "csv": folder / "table.csv",
        "json": folder / "table.json",
    }
    files["markdown"].write_text(markdown_table(rows))
    files["csv"].write_text(csv_table(rows))
    files["json"].write_text(json.dumps(_json_document(result, config, rows), indent=1) + "\n")
    return files


def _metric_name(text: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", text)


def _log_rows(
    run_id: str,
    rows: Sequence[TableRow],
    result: EvaluationResult,
    config: EvaluateConfig,
    uri: str,
    *,
    by_model: bool,
) -> None:
    from pipeline import tracking

    metrics = {}
    for row in rows:
        prefix = row.metric_prefix()
        if by_model:
            prefix = prefix.replace("eval/", f"eval/{_metric_name(row.model)}/", 1)
        metrics[f"{prefix}/top1_error"] = row.top1_error / 100
        metrics[f"{prefix}/top5_error"] = row.top5_error / 100
    tracking.log_metrics(run_id, metrics, step=0, uri=uri)
    with tempfile.TemporaryDirectory(prefix="vggpipe-evaluation-") as folder:
        files = write_tables(Path(folder), result, config, rows)
        for path in files.values():
            tracking.log_artifact(run_id, str(path), f"evaluation/{result.name}", uri)


def _log(result: EvaluationResult, config: EvaluateConfig, uri: str) -> None:
    """Each net's rows on its own run; the whole table on an evaluation run when
    there is an ensemble, several nets, a net without a run, or a run name."""
    from pipeline import tracking

    for model in result.models:
        if model.run_id is None:
            continue
        own = [
            row for row in result.rows if row.run_id == model.run_id and row.model == model.label
        ]
        _log_rows(model.run_id, own, result, config, uri, by_model=False)
        result.run_ids.append(model.run_id)
    if len(result.models) == 1 and result.models[0].run_id is not None and not config.run_name:
        return  # a named evaluation (a workflow's stage) gets its own run all the same
    run_id = tracking.start_run(
        result.name,
        config.experiment,
        uri=uri,
        parent_run_id=config.parent_run_id,
        tags={
            tracking.STAGE_TAG: EVALUATION_STAGE,
            "vggpipe.evaluated_models": ", ".join(config.models)[:5000],
        },
    )
    try:
        params = {name: getattr(config, name) for name in RESULT_FIELDS} | {"data": result.data}
        tracking.log_params(
            run_id, {k: "" if v is None else str(v) for k, v in params.items()}, uri
        )
        tracking.log_text(run_id, config.to_json(), f"evaluation/{result.name}/config.json", uri)
        _log_rows(run_id, result.rows, result, config, uri, by_model=True)
    except BaseException:
        tracking.end_run(run_id, "FAILED", uri)
        raise
    tracking.end_run(run_id, "FINISHED", uri)
    result.evaluation_run_id = run_id
    result.run_ids.append(run_id)


__all__ = [
    "PROTOCOL_VIEWS",
    "EvaluatedModel",
    "EvaluationResult",
    "PlannedRow",
    "TableRow",
    "evaluate",
    "load_model",
    "markdown_table",
    "plan_rows",
    "run_evaluation",
    "scales_for",
]
