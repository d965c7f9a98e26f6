"""One whole training step as a GPU worker runs it, on the `meta` device: no
GPU needed to prove that every random draw of the step happens on the CPU
generator the loop hands over (torch refuses a CPU generator for a CUDA draw,
which failed every paper run on its first step) and that nothing in the step
pulls a tensor off the model's device."""

from __future__ import annotations

import torch

from pipeline.recipes import recipe
from pipeline.train.loop import sgd_step
from vgg import build_vgg
from vgg.transforms import PixelStatistics, TrainingAugmentation

RANDOM_FUNCTIONS = ("randn", "rand", "randint", "normal", "randperm", "bernoulli")


def test_a_whole_step_on_the_meta_device_draws_only_on_the_cpu_generator(monkeypatch):
    draws = []
    for name in RANDOM_FUNCTIONS:
        real = getattr(torch, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            tensor = _real(*args, **kwargs)
            draws.append((_name, kwargs.get("generator"), tensor.device.type))
            return tensor

        monkeypatch.setattr(torch, name, recording)

    config = recipe("smoke", ["colour_shift_std=0.1", "micro_batch_size=4", "global_batch_size=8"])
    device = torch.device("meta")
    model = build_vgg("A", width=0.0625, num_classes=10, crop_size=32).to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batches = [
        {
            "image": torch.empty((4, 32, 32, 3), dtype=torch.uint8, device=device),
            "label": torch.empty((4,), dtype=torch.int64, device=device),
        }
        for _ in range(2)  # two micro-batches: gradient accumulation
    ]
    generator = torch.Generator().manual_seed(0)

    loss = sgd_step(
        model,
        model,
        optimiser,
        batches,
        augmentation=TrainingAugmentation(36, 32, colour_shift_std=0.1),
        stats=PixelStatistics.imagenet(),
        generator=generator,
        config=config,
        device=device,
    )

    assert loss.device.type == "meta" and loss.shape == ()
    assert all(p.device.type == "meta" for p in model.parameters())
    # The colour shift of each micro-batch, and nothing else, drew: on the CPU,
    # from the loop's generator.
    assert draws == [("randn", generator, "cpu")] * 2
