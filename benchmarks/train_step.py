"""Training-step throughput: our config D against torchvision's vgg16.

Both models hold the same weights and see the same batch; their steps
(forward, backward, SGD with momentum and weight decay) alternate in one run so
that machine noise hits both alike. Reports images/s per model (median over
steps), the ratio ours/torchvision, and on a GPU the model FLOP utilisation
against a peak you pass in.

    python benchmarks/train_step.py                       # CPU, batch 8 at 224
    python benchmarks/train_step.py --device cuda --batch 128 --bf16 \\
        --channels-last --peak-tflops 989                 # an H200
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torchvision

from vgg import build_vgg, count_macs, load_torchvision_state_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak for the dtype in use, for model FLOP utilisation "
        "(an H200 SXM: 989 dense; NVIDIA publishes no 790 for any part)",
    )
    return parser.parse_args(argv)


def make_step(model: torch.nn.Module, args: argparse.Namespace):
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = (
        torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
        if args.bf16
        else contextlib.nullcontext()
    )
    forward = torch.compile(model) if args.compile else model

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimiser.step()

    return step


def timed(step, images, labels, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(images, labels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    reference = torchvision.models.vgg16(weights=None)
    # Equal weights keep the comparison about the code, not about the numbers.
    ours = load_torchvision_state_dict(build_vgg("D"), reference.state_dict())
    models = {"ours (config D)": ours, "torchvision vgg16": reference}
    steps = {}
    for name, model in models.items():
        model.to(args.device, memory_format=memory_format).train()
        steps[name] = make_step(model, args)

    images = torch.randn(args.batch, 3, 224, 224, device=args.device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=args.device)

    for _ in range(args.warmup):
        for step in steps.values():
            step(images, labels)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            seconds[name].append(timed(step, images, labels, args.device))

    flops_per_image = 3 * 2 * count_macs(ours, 224)  # a step is ~3 forward passes
    print(
        f"device={args.device} batch={args.batch} crop=224 "
        f"channels_last={args.channels_last} bf16={args.bf16} compile={args.compile} "
        f"threads={torch.get_num_threads()} steps={args.steps}"
    )
    rates = {}
    for name, times in seconds.items():
        rates[name] = args.batch / statistics.median(times)
        line = f"{name:20s} {rates[name]:9.1f} images/s"
        if args.peak_tflops:
            mfu = rates[name] * flops_per_image / (args.peak_tflops * 1e12)
            line += f"   MFU {100 * mfu:5.1f}% of {args.peak_tflops:g} TFLOP/s"
        print(line)
    ours_rate, reference_rate = rates.values()
    print(f"ratio ours/torchvision: {ours_rate / reference_rate:.3f}")
    return rates


if __name__ == "__main__":
    main()
