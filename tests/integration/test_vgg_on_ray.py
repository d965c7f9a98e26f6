"""A VGG built in the driver travels to a Ray worker and computes the same
logits there: the stages ship models and state dicts through Ray's object store."""

from __future__ import annotations

import torch

from vgg import build_vgg


def test_model_round_trips_through_a_ray_task(ray_local):
    torch.manual_seed(0)
    model = build_vgg("B", width=0.0625, num_classes=5, crop_size=64).eval()
    images = torch.randn(3, 3, 64, 64)

    @ray_local.remote(num_cpus=1)
    def logits_on_worker(state_dict, images):
        from vgg import build_vgg

        worker_model = build_vgg("B", width=0.0625, num_classes=5, crop_size=64).eval()
        worker_model.load_state_dict(state_dict)
        with torch.no_grad():
            return worker_model(images)

    remote = ray_local.get(logits_on_worker.remote(model.state_dict(), images))
    with torch.no_grad():
        assert torch.allclose(remote, model(images), atol=1e-6)
