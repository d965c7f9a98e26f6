"""The paper's test protocols as scoring (vgg.evaluation), in a plain process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from vgg import build_vgg, to_fully_convolutional
from vgg.evaluation import (
    Architecture,
    SizeBuckets,
    architecture_of,
    average_posteriors,
    bucketed,
    build_from_state_dict,
    crop_posteriors,
    dense_posteriors,
    multi_test_scales,
    single_test_scale,
    softmax_posteriors,
    spatial_average,
    top_k_errors,
)
from vgg.model import CONFIGS
from vgg.transforms import grid_offsets, multi_crop


def pixels(*shape: int) -> torch.Tensor:
    """Stand-in model inputs at the scale of real ones: 0-255 minus the mean."""
    return 60 * torch.randn(*shape)


@pytest.fixture(scope="module")
def net():
    """A small net whose logits spread over several units: with the paper's
    N(0, 0.01) init they are ~1e-14 and any two posteriors agree to any
    tolerance, so no comparison below could fail."""
    torch.manual_seed(0)
    model = build_vgg("A", width=0.125, num_classes=10, crop_size=64, init="kaiming").eval()
    with torch.no_grad():
        model.classifier[6].weight *= 3 / model(pixels(16, 3, 64, 64)).std()
        assert model(pixels(16, 3, 64, 64)).std() > 1
    return model


def test_dense_scores_on_a_crop_size_input_equal_the_single_crop_logits(net):
    dense = to_fully_convolutional(net)
    crops = pixels(4, 3, 64, 64)
    with torch.no_grad():
        logits = net(crops)
        assert torch.allclose(spatial_average(dense(crops)), logits, atol=1e-5)
        unflipped = dense_posteriors(dense, crops, flip=False)
        assert torch.allclose(unflipped, softmax_posteriors(logits), atol=1e-6)
        # With the flip, dense evaluation of a crop is exactly the centre crop
        # and its mirror image, each through the ordinary network.
        both = torch.stack([crops, crops.flip(-1)], dim=1)
        assert torch.allclose(dense_posteriors(dense, crops), crop_posteriors(net, both), atol=1e-6)


def test_dense_averages_the_score_map_over_every_window(net):
    dense = to_fully_convolutional(net)
    image = pixels(1, 3, 96, 128)  # pool5 is 3 x 4: a 2 x 3 map of 2 x 2 windows
    with torch.no_grad():
        pooled = net.features(image)
        # Each cell is FC1-FC3 on one 2 x 2 window of the whole image's pool5
        # map; the map's windows see their neighbours through the 3x3 convs, so
        # they are not the logits of the same pixels cropped out alone.
        cells = torch.cat(
            [
                net.classifier(torch.flatten(pooled[:, :, i : i + 2, j : j + 2], 1))
                for i in range(2)
                for j in range(3)
            ]
        )
        expected = softmax_posteriors(cells.mean(dim=0, keepdim=True))
        assert torch.allclose(dense_posteriors(dense, image, flip=False), expected, atol=1e-5)
        # Averaging scores, then softmax: not the mean of the cells' posteriors.
        assert not torch.allclose(expected, softmax_posteriors(cells).mean(dim=0), atol=1e-3)


def _position_image(height: int, width: int) -> np.ndarray:
    """Every pixel says where it is: R = row, G = column (mod 256), B = 0."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows % 256, cols % 256, np.zeros_like(rows)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(36, 68), (37, 90), (64, 64), (256, 341)])
def test_multi_crop_grid_includes_the_corners_and_the_centre(height, width):
    crop = 32
    image = _position_image(height, width)
    views = multi_crop(image, crop, grid=5)
    assert views.shape == (50, crop, crop, 3)
    tops = {int(v[0, 0, 0]) for v in views[:25]}
    lefts = {int(v[0, 0, 1]) for v in views[:25]}
    corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop)]
    origins = {(int(v[0, 0, 0]), int(v[0, 0, 1])) for v in views[:25]}
    for top, left in corners:
        assert (top % 256, left % 256) in origins
        window = image[top : top + crop, left : left + crop]
        assert any(np.array_equal(window, v) for v in views[:25])
    # The middle crop is the centred window, to the half pixel when the spare
    # length is odd (a crop cannot sit between pixels).
    assert min(abs(t - (height - crop) / 2) for t in tops) <= 0.5
    assert min(abs(left - (width - crop) / 2) for left in lefts) <= 0.5
    # The second 25 are the first 25 mirrored.
    assert np.array_equal(views[25:], views[:25, :, ::-1])


def test_grid_offsets_are_mirror_symmetric_for_an_even_spare_length():
    for span in (0, 2, 4, 6, 10, 30, 117 * 2):
        offsets = grid_offsets(span + 32, 32, 5)
        assert offsets == [span - o for o in reversed(offsets)]


def test_flip_averaging_is_symmetric(net):
    dense = to_fully_convolutional(net)
    images = pixels(3, 3, 70, 101)
    with torch.no_grad():
        assert torch.allclose(
            dense_posteriors(dense, images), dense_posteriors(dense, images.flip(-1)), atol=1e-6
        )
        # Multi-crop with its flips: a mirrored image gives the same 50 views
        # (when the grid is mirror symmetric: an even spare length).
        image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        views = [multi_crop(image, 64), multi_crop(np.ascontiguousarray(image[:, ::-1]), 64)]
        as_input = [torch.from_numpy(v.copy()).permute(0, 3, 1, 2).float()[None] for v in views]
        assert torch.allclose(crop_posteriors(net, as_input[0]), crop_posteriors(net, as_input[1]))


def test_crop_posteriors_average_softmax_over_each_images_views(net):
    crops = pixels(2, 5, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([softmax_posteriors(net(c)).mean(dim=0) for c in crops])
        assert torch.allclose(crop_posteriors(net, crops, batch_size=3), expected, atol=1e-6)


def test_average_posteriors_is_the_equal_weight_mean():
    a = torch.tensor([[0.7, 0.2, 0.1]])
    b = torch.tensor([[0.1, 0.1, 0.8]])
    assert torch.allclose(average_posteriors([a, b]), torch.tensor([[0.4, 0.15, 0.45]]))
    with pytest.raises(ValueError, match="no posteriors"):
        average_posteriors([])


def test_top_k_errors_count_labels_outside_the_top_k():
    posteriors = torch.tensor(
        [
            [0.50, 0.20, 0.10, 0.08, 0.07, 0.05],  # label 0: right
            [0.50, 0.20, 0.10, 0.08, 0.07, 0.05],  # label 4: top-5 only
            [0.50, 0.20, 0.10, 0.08, 0.07, 0.05],  # label 5: wrong at both
        ]
    )
    assert top_k_errors(posteriors, torch.tensor([0, 4, 5])) == {1: 2, 5: 1}
    # Fewer classes than k: top-5 over 3 classes never misses.
    assert top_k_errors(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([0])) == {1: 1, 5: 0}


def test_test_scales_follow_the_paper():
    assert single_test_scale(256, 256) == 256
    assert single_test_scale(256, 512) == 384
    assert multi_test_scales(256, 256) == (224, 256, 288)
    assert multi_test_scales(384, 384) == (352, 384, 416)
    assert multi_test_scales(256, 512) == (256, 384, 512)
    # S - 32 below the crop is raised to the crop size (the demo nets).
    assert multi_test_scales(36, 36, crop_size=32) == (32, 36, 68)
    assert multi_test_scales(32, 32, crop_size=32) == (32, 64)
    assert multi_test_scales(256, 256, crop_size=224) == (224, 256, 288)


def test_size_buckets_hand_out_each_image_once_in_equal_size_batches():
    rng = np.random.default_rng(0)
    sizes = [(36, 48), (48, 36), (36, 36)]
    items = [(i, np.zeros((*sizes[int(rng.integers(3))], 3), np.uint8)) for i in range(40)]
    buckets = list(bucketed(items, batch_size=4))
    seen = [key for bucket in buckets for key in bucket.keys]
    assert sorted(seen) == list(range(40))
    for bucket in buckets:
        assert len(bucket.keys) <= 4
        assert {image.shape[:2] for image in bucket.images} == {bucket.size}
        assert bucket.stacked().shape == (len(bucket.keys), *bucket.size, 3)
    # At most one partial bucket per size.
    assert sum(len(b.keys) < 4 for b in buckets) <= len(sizes)
    buckets = SizeBuckets(2)
    assert buckets.add("a", np.zeros((5, 5, 3))) == []
    assert len(buckets) == 1
    (full,) = buckets.add("b", np.zeros((5, 5, 3)))
    assert full.keys == ["a", "b"] and len(buckets) == 0 and buckets.drain() == []


def test_bucketed_dense_evaluation_equals_one_image_at_a_time(net):
    dense = to_fully_convolutional(net)
    rng = np.random.default_rng(1)
    shapes = [(64, 96), (96, 64), (64, 96), (64, 64), (64, 96), (96, 64)]
    items = [
        (i, 60 * rng.standard_normal((3, *shape)).astype(np.float32))
        for i, shape in enumerate(shapes)
    ]
    with torch.no_grad():
        alone = {key: dense_posteriors(dense, torch.from_numpy(x)[None])[0] for key, x in items}
        for bucket in bucketed([(k, x.transpose(1, 2, 0)) for k, x in items], batch_size=8):
            batch = torch.from_numpy(bucket.stacked()).permute(0, 3, 1, 2)
            for key, posterior in zip(bucket.keys, dense_posteriors(dense, batch), strict=True):
                assert torch.allclose(posterior, alone[key], atol=1e-5)


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19"])
def test_architecture_of_torchvision_state_dicts(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        state_dict = getattr(torchvision.models, name)().state_dict()
    expected = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[name]
    assert architecture_of(state_dict) == Architecture(expected, 1.0, 1000, 224)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_architecture_of_our_nets_of_every_config(config):
    model = build_vgg(config, width=0.0625, num_classes=7, crop_size=64)
    assert architecture_of(model.state_dict()) == Architecture(config, 0.0625, 7, 64)


def test_architecture_of_refuses_what_is_not_a_vgg():
    with pytest.raises(ValueError, match="not a VGG state dict"):
        architecture_of({"fc.weight": torch.zeros(2, 2)})
    state_dict = build_vgg("B", width=0.0625, num_classes=7).state_dict()
    del state_dict["features.2.weight"], state_dict["features.2.bias"]
    with pytest.raises(ValueError, match="fits no VGG config"):
        architecture_of(state_dict)


def test_build_from_state_dict_gives_the_same_network(net):
    rebuilt = build_from_state_dict(net.state_dict())
    assert not rebuilt.training
    x = pixels(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
