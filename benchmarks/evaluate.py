"""Dense evaluation: images of equal rescaled size batched together (what
`pipeline.evaluation.worker` does, `vgg.evaluation.SizeBuckets`) against one
image at a time, on the same images, same net, alternating in one run.

Each image (with its flipped copy, as the protocol wants) goes through the
fully convolutional net and its posteriors are kept; the two ways must agree,
and the benchmark checks that they do. Reports images/s both ways, the ratio,
how many sizes there were and how full the batches were.

    python benchmarks/evaluate.py                         # ImageNet-like sizes, CPU
    python benchmarks/evaluate.py --data DATASET --scale 36 --crop 32 --width 0.0625
    python benchmarks/evaluate.py --device cuda --width 1 --images 512 --batch 32

Sizes: with --data, the stored sizes of a prepared dataset's split, rescaled
to Q (the demo digits have random aspect ratios: bucketing's worst case);
without, a stand-in for ILSVRC-2012 validation images, mostly 500x375 and
375x500 with some 500x333, 333x500 and square photos and a tail of odd sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np
import torch

from vgg import build_vgg, to_fully_convolutional
from vgg.evaluation import bucketed, dense_posteriors
from vgg.transforms import rescaled_size

# (height, width, share) of the stand-in size mix; the rest are random.
IMAGENET_LIKE_SIZES = (
    (375, 500, 0.55),
    (500, 375, 0.15),
    (333, 500, 0.12),
    (500, 333, 0.03),
    (500, 500, 0.05),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", help="prepared dataset whose image sizes to use")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=96, help="images evaluated each way")
    parser.add_argument("--scale", type=int, default=256, help="test scale Q")
    parser.add_argument("--crop", type=int, default=224, help="the net's crop size")
    parser.add_argument("--config", default="A")
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier")
    parser.add_argument("--batch", type=int, default=16, help="most images per bucket")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs each way")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def stored_sizes(data: str, split: str, count: int) -> list[tuple[int, int]]:
    from pipeline.shards import ShardStore

    store = ShardStore(data)
    sizes: list[tuple[int, int]] = []
    for shard in store.shards(split):
        table = store.read_shard(shard, ["height", "width"])
        sizes += list(zip(table["height"].to_pylist(), table["width"].to_pylist(), strict=True))
        if len(sizes) >= count:
            break
    return sizes[:count]


def imagenet_like_sizes(count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    shares = [share for *_, share in IMAGENET_LIKE_SIZES]
    sizes = []
    for _ in range(count):
        pick = rng.choice(len(shares) + 1, p=[*shares, 1 - sum(shares)])
        if pick < len(shares):
            sizes.append(IMAGENET_LIKE_SIZES[pick][:2])
        else:
            sizes.append((int(rng.integers(200, 800)), int(rng.integers(200, 800))))
    return sizes


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if args.data:
        sizes = stored_sizes(args.data, args.split, args.images)
    else:
        sizes = imagenet_like_sizes(args.images, rng)
    rescaled = [rescaled_size(h, w, args.scale) for h, w in sizes]
    # Random pixels: the cost of a forward pass does not depend on them.
    images = [
        (i, rng.standard_normal((3, h, w)).astype(np.float32)) for i, (h, w) in enumerate(rescaled)
    ]
    model = build_vgg(args.config, width=args.width, crop_size=args.crop, num_classes=1000)
    dense = to_fully_convolutional(model).to(args.device)
    autocast = (
        torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
        if args.bf16
        else torch.autocast("cpu", enabled=False)
    )

    def one_at_a_time() -> dict[int, torch.Tensor]:
        out = {}
        for key, image in images:
            x = torch.from_numpy(image)[None].to(args.device)
            with autocast:
                out[key] = dense_posteriors(dense, x)[0]
        return out

    def in_buckets() -> dict[int, torch.Tensor]:
        out = {}
        # Buckets hold HWC arrays as the pipeline's do; the net takes NCHW.
        items = ((key, image.transpose(1, 2, 0)) for key, image in images)
        for bucket in bucketed(items, args.batch):
            x = torch.from_numpy(np.ascontiguousarray(bucket.stacked().transpose(0, 3, 1, 2)))
            with autocast:
                posteriors = dense_posteriors(dense, x.to(args.device))
            out.update(zip(bucket.keys, posteriors, strict=True))
        return out

    ways = {"one image at a time": one_at_a_time, "bucketed": in_buckets}
    results: dict[str, dict[int, torch.Tensor]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    with torch.inference_mode():
        for name, way in ways.items():  # warm-up, and the posteriors to compare
            results[name] = way()
        for _ in range(args.repeats):
            for name, way in ways.items():
                synchronise(args.device)
                start = time.perf_counter()
                way()
                synchronise(args.device)
                seconds[name].append(time.perf_counter() - start)

    difference = max(
        float((results["bucketed"][k] - results["one image at a time"][k]).abs().max())
        for k in results["bucketed"]
    )
    tolerance = 1e-2 if args.bf16 else 1e-4
    if difference > tolerance:
        raise AssertionError(f"bucketed posteriors differ from one at a time by {difference:g}")

    counts = Counter(rescaled)
    passes = sum(-(-n // args.batch) for n in counts.values())
    print(
        f"device={args.device} config={args.config} width={args.width} crop={args.crop} "
        f"Q={args.scale} images={len(images)} bucket<={args.batch} bf16={args.bf16} "
        f"threads={torch.get_num_threads()} sizes={'--data ' + args.data if args.data else 'ImageNet-like'}"
    )
    print(
        f"{len(counts)} distinct rescaled sizes; the commonest {counts.most_common(1)[0][0]} holds "
        f"{counts.most_common(1)[0][1]} images; {passes} bucketed forward passes "
        f"({len(images) / passes:.1f} images each) instead of {len(images)}"
    )
    rates = {}
    for name, times in seconds.items():
        rates[name] = len(images) / statistics.median(times)
        print(f"{name:20s} {rates[name]:9.1f} images/s")
    ratio = rates["bucketed"] / rates["one image at a time"]
    print(f"ratio bucketed/one at a time: {ratio:.2f}   (posteriors agree to {difference:.1e})")
    return {**rates, "ratio": ratio, "images_per_pass": len(images) / passes, "sizes": len(counts)}


if __name__ == "__main__":
    main()
