"""An evaluation worker (a Ray task): its share of the images, every net,
every view the plan needs, and the rows' error counts.

Each image is decoded once per test scale Q, as the whole image with its
shorter side Q; the centre crop and the multi-crop grid are cut from that array
here, so a 50-crop tensor per image never crosses the object store. Dense
evaluation batches images of equal rescaled size (`vgg.evaluation.SizeBuckets`)
on a GPU; a CPU worker takes them one at a time, which measured faster there
(`benchmarks/evaluate.py`). The worker keeps its images' posteriors for every
(net, Q, view), combines them per row (views, then scales, then nets) and
returns only error counts and, if asked, each image's top-5 classes: the
posteriors of 50,000 images never travel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline.evaluation.nets import EvaluatedModel
from pipeline.evaluation.plan import PROTOCOL_VIEWS, PlannedRow, needed_views

if TYPE_CHECKING:
    import torch

ROWS_PER_READ = 16  # whole images per Ray Data batch a worker takes


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
    dense_ceil_mode: bool = True  # EvaluateConfig.dense_ceil_mode
    dense_pooling: str = "mean"  # EvaluateConfig.dense_pooling
    dense_region: str = "centred"  # EvaluateConfig.dense_region


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


def centre_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
    """The centre crop of an image already rescaled to its test scale (HWC)."""
    from vgg.transforms import center_crop_box

    height, width = image.shape[:2]
    # Rescaled already: its shorter side is Q, so the box is in this array's frame.
    box = center_crop_box(height, width, min(height, width), crop_size)
    return image[box.top : box.top + box.size, box.left : box.left + box.size]


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
            i: to_fully_convolutional(self.nets[i], ceil_mode=job.dense_ceil_mode)
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
        crops = _as_input(np.stack([centre_crop(im, crop) for im in images]), model, self.device)
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
                posteriors = dense_posteriors(self.dense_nets[i], x, pooling=self.job.dense_pooling)
            self.collected.add(i, scale, "dense", bucket.keys, posteriors)
            self.dense_images += len(bucket.keys)
            self.dense_passes += 1

    def dense_view(self, image: np.ndarray, crop_size: int) -> np.ndarray:
        """What of a rescaled image the dense nets of `crop_size` see
        (EvaluateConfig.dense_region)."""
        from vgg.dense import whole_window_region

        if self.job.dense_region == "whole":
            return image
        top, left, height, width = whole_window_region(*image.shape[:2], crop_size)
        return image[top : top + height, left : left + width]

    def one_scale(self, scale: int, dataset, progress) -> None:
        """Every image of `dataset` (whole, rescaled to `scale`) through every
        net and view that the rows need at this scale."""
        from vgg.evaluation import SizeBuckets

        views_by_model = self.needs[scale]
        # Dense nets by crop size: each size sees its own region of an image.
        dense_by_crop: dict[int, list[int]] = {}
        for i, views in views_by_model.items():
            if "dense" in views:
                crop = self.job.models[i].architecture.crop_size
                dense_by_crop.setdefault(crop, []).append(i)
        buckets = {crop: SizeBuckets(self.dense_batch_size) for crop in dense_by_crop}
        for batch in dataset.iter_batches(batch_size=ROWS_PER_READ, batch_format="numpy"):
            keys = [str(key) for key in batch["key"]]
            self.collected.labels.update(zip(keys, (int(x) for x in batch["label"]), strict=True))
            images = list(batch["image"])
            for i, views in views_by_model.items():
                if "centre" in views:
                    self.centre(i, scale, keys, images)
                if "multi-crop" in views:
                    self.multi_crop(i, scale, keys, images)
            for crop, models in dense_by_crop.items():
                for key, image in zip(keys, images, strict=True):
                    for bucket in buckets[crop].add(key, self.dense_view(image, crop)):
                        self.dense(models, scale, bucket)
            if progress is not None:
                progress.add.remote(len(keys))
        for crop, models in dense_by_crop.items():
            for bucket in buckets[crop].drain():
                self.dense(models, scale, bucket)

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


__all__ = [
    "ROWS_PER_READ",
    "ProgressCounter",
    "ShareJob",
    "ShareResult",
    "centre_crop",
    "evaluate_share",
]
