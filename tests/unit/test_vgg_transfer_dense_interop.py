"""Net-A initialisation, the dense network and torchvision interop."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vgg import (
    build_vgg,
    init_from_shallower,
    load_torchvision_state_dict,
    to_fully_convolutional,
    to_torchvision_state_dict,
    whole_window_region,
)
from vgg.evaluation import spatial_average

TORCHVISION_TWINS = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


@pytest.mark.parametrize(("config", "name"), TORCHVISION_TWINS.items())
def test_torchvision_weights_give_the_same_logits_and_round_trip(config, name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    # Allocated, not initialised: every weight comes from the reference.
    with torch.device("meta"):
        shell = build_vgg(config)
    ours = load_torchvision_state_dict(shell.to_empty(device="cpu"), reference.state_dict()).eval()
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(image) - reference(image)).abs().max() < 1e-4
    exported = to_torchvision_state_dict(ours)
    assert exported.keys() == reference.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in reference.state_dict().items())


def test_interop_refuses_configs_without_a_twin_and_wrong_shapes():
    with pytest.raises(ValueError, match="no VGG for config C"):
        to_torchvision_state_dict(build_vgg("C", width=0.0625))
    # Names and shapes are refused before any weight is read: meta tensors,
    # none of the full nets' parameters allocated or initialised.
    with torch.device("meta"):
        state = torchvision.models.vgg11(weights=None).state_dict()
        with pytest.raises(ValueError, match="does not fit"):
            load_torchvision_state_dict(build_vgg("A", crop_size=256), state)
        with pytest.raises(ValueError, match="not a torchvision vgg13"):
            load_torchvision_state_dict(build_vgg("B"), state)


def test_dense_network_equals_logits_on_a_crop_and_maps_larger_inputs():
    torch.manual_seed(0)
    # He init: logits of order one, so the equality below can fail (the paper's
    # N(0, 0.01) init gives logits near 1e-14 that any code would match).
    model = build_vgg("D", width=0.125, num_classes=10, init="kaiming", init_std=0.1).eval()
    dense = to_fully_convolutional(model)
    crop = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(crop)
        scores = dense(crop)
        assert scores.shape == (2, 10, 1, 1)
        assert torch.allclose(scores.flatten(1), logits, atol=1e-5)
        assert logits.abs().max() > 0.1
        assert dense(torch.randn(1, 3, 384, 384)).shape == (1, 10, 6, 6)


def test_dense_pooling_rounds_up_as_caffe_did_unless_asked_not_to():
    torch.manual_seed(0)
    model = build_vgg("A", width=0.0625, num_classes=4, crop_size=32, init="kaiming").eval()
    ceil, floor = to_fully_convolutional(model), to_fully_convolutional(model, ceil_mode=False)
    with torch.no_grad():
        # 48 pixels: 24, 12, 6, 3, then 2 windows rounding up, 1 rounding down;
        # the border the floor drops is a whole score window here.
        assert ceil(torch.randn(1, 3, 48, 48)).shape == (1, 4, 2, 2)
        assert floor(torch.randn(1, 3, 48, 48)).shape == (1, 4, 1, 1)
        # At a multiple of 32 the two agree to the bit.
        image = torch.randn(1, 3, 64, 96)
        assert torch.equal(ceil(image), floor(image))


def test_the_whole_window_region_is_centred_and_tiled_exactly():
    # The paper's Q with 224 crops: the whole image.
    assert whole_window_region(256, 341, 224) == (0, 10, 256, 320)
    assert whole_window_region(384, 384, 224) == (0, 0, 384, 384)
    # The demo's Q = S = 72 with 64 crops: one window, centred as the centre crop.
    assert whole_window_region(72, 75, 64) == (4, 5, 64, 64)
    # Q = 108: two windows each way, the 12 pixels left over split 6 and 6.
    assert whole_window_region(108, 108, 64) == (6, 6, 96, 96)
    torch.manual_seed(0)
    model = build_vgg("A", width=0.0625, num_classes=4, crop_size=64, init="kaiming").eval()
    image = torch.randn(1, 3, 72, 75)
    top, left, height, width = whole_window_region(72, 75, 64)
    with torch.no_grad():
        centre = model(image[:, :, top : top + 64, left : left + 64])
        dense = to_fully_convolutional(model)(image[:, :, top : top + height, left : left + width])
    assert torch.allclose(dense.flatten(1), centre, atol=1e-5)


def test_score_maps_are_averaged_or_summed():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(spatial_average(maps, "sum"), 4 * spatial_average(maps))
    with pytest.raises(ValueError, match="pooling must be one of mean, sum"):
        spatial_average(maps, "max")


def test_dense_network_is_a_copy():
    model = build_vgg("A", width=0.0625, num_classes=4)
    dense = to_fully_convolutional(model)
    with torch.no_grad():
        dense.classifier[0].weight.zero_()
    assert model.classifier[0].weight.abs().sum() > 0
    assert model.training and not dense.training


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_init_from_shallower_copies_the_paper_layers_into_d():
    torch.manual_seed(0)
    net_a = build_vgg("A", width=0.125, num_classes=10)
    net_d = build_vgg("D", width=0.125, num_classes=10)
    copied = init_from_shallower(net_d, net_a)

    copied_convs = {(1, 1), (2, 1), (3, 1), (3, 2)}
    for site in net_d.conv_sites:
        layer = net_d.features[site.index]
        if (site.stage, site.position) in copied_convs:
            assert _same(layer, net_a.conv(site.stage, site.position))
        else:
            assert not torch.equal(layer.weight, torch.zeros_like(layer.weight))
            matches = [
                _same(layer, net_a.features[s.index])
                for s in net_a.conv_sites
                if net_a.features[s.index].weight.shape == layer.weight.shape
            ]
            assert not any(matches), f"conv {site} should stay random"
    for i in (0, 3, 6):
        assert _same(net_d.classifier[i], net_a.classifier[i])
    # D's features: stage 1 is conv, relu, conv, relu, pool (indices 0-4), so its
    # stage-2 conv 1 is index 5 and stage 3's first two convs are 10 and 12.
    layers = [
        "features.0",
        "features.5",
        "features.10",
        "features.12",
        "classifier.0",
        "classifier.3",
        "classifier.6",
    ]
    assert sorted(copied) == sorted(
        f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")
    )


@pytest.mark.parametrize("config", ["B", "C", "E"])
def test_init_from_shallower_fits_every_deeper_config(config):
    net_a = build_vgg("A", width=0.0625, num_classes=5)
    assert len(init_from_shallower(build_vgg(config, width=0.0625, num_classes=5), net_a)) == 14


def test_init_from_shallower_rejects_mismatches():
    net_d = build_vgg("D", width=0.0625, num_classes=10)
    with pytest.raises(ValueError, match="copies from config A"):
        init_from_shallower(net_d, build_vgg("B", width=0.0625, num_classes=10))
    with pytest.raises(ValueError, match="equal width"):
        init_from_shallower(net_d, build_vgg("A", width=0.125, num_classes=10))
    with pytest.raises(ValueError, match="equal num_classes"):
        init_from_shallower(net_d, build_vgg("A", width=0.0625, num_classes=11))
    with pytest.raises(ValueError, match="equal crop_size"):
        init_from_shallower(net_d, build_vgg("A", width=0.0625, num_classes=10, crop_size=64))
