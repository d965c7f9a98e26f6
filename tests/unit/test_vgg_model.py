"""The networks of Table 1: shapes, parameter counts, bad arguments."""

from __future__ import annotations

import pytest
import torch

from vgg import CONFIGS, VGG, build_vgg, count_macs, count_parameters, init_weights, vgg16

# PAPER.md section 1, exact counts at 1000 classes and a 224 input.
PAPER_PARAMETERS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}
PAPER_WEIGHT_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
# PAPER.md section 5, G multiply-adds of a 224 forward pass.
PAPER_GMACS = {"A": 7.61, "B": 11.31, "D": 15.47, "E": 19.63}


def meta_vgg(config: str) -> VGG:
    with torch.device("meta"):
        return VGG(config)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_parameter_counts_and_depth_match_the_paper(config):
    # On the meta device: shapes only, none of the 138M parameters allocated or
    # initialised (torch's own layer init is most of a full net's build time).
    model = meta_vgg(config)
    assert count_parameters(model) == PAPER_PARAMETERS[config]
    assert model.weight_layers == PAPER_WEIGHT_LAYERS[config]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 5


@pytest.mark.parametrize("config", list(PAPER_GMACS))
def test_multiply_adds_match_the_paper(config):
    assert count_macs(meta_vgg(config), 224) / 1e9 == pytest.approx(PAPER_GMACS[config], abs=0.005)


def test_config_c_has_three_1x1_convs_and_lrn_only_in_a_lrn():
    kernels = [m.kernel_size for m in meta_vgg("C").features if isinstance(m, torch.nn.Conv2d)]
    assert kernels.count((1, 1)) == 3
    assert [k for k in kernels if k != (1, 1)] == [(3, 3)] * 10
    lrn = [type(m).__name__ for m in meta_vgg("A-LRN").features].count("LocalResponseNorm")
    assert lrn == 1
    assert not any(isinstance(m, torch.nn.LocalResponseNorm) for m in meta_vgg("A").features)


def test_narrow_net_forward_shape_and_aliases():
    model = build_vgg("vgg16", num_classes=7, width=0.0625, crop_size=64).eval()
    assert model.config == "D"
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert model.conv(1, 1).out_channels == 4
    assert model.classifier[0].out_features == 256
    assert vgg16(width=0.0625, num_classes=3, crop_size=32).config == "D"


def test_fc1_input_follows_crop_size():
    model = build_vgg("A", width=0.125, crop_size=96, num_classes=5)
    assert model.classifier[0].in_features == 64 * 3 * 3
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 128, 128))  # no adaptive pooling: other sizes are dense's job


def test_gaussian_init_has_requested_std_and_zero_biases():
    model = build_vgg("A", width=0.25, num_classes=10, init="gaussian", init_std=0.02)
    weights = torch.cat([model.classifier[0].weight.flatten(), model.features[0].weight.flatten()])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(
        m.bias.abs().sum() == 0
        for m in model.modules()
        if hasattr(m, "bias") and m.bias is not None
    )


def test_xavier_init_bounds_follow_fan_in_and_out():
    model = build_vgg("A", width=0.25, num_classes=10, init="xavier")
    fc2 = model.classifier[3]
    bound = (6 / (fc2.in_features + fc2.out_features)) ** 0.5
    assert fc2.weight.abs().max() <= bound
    assert fc2.weight.abs().max() > 0.9 * bound


def test_kaiming_init_is_torchvisions():
    model = build_vgg("A", width=0.25, num_classes=10, init="kaiming")
    conv = model.features[0]  # fan_out = 16 channels * 3 * 3
    assert conv.weight.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.15)
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"config": "F"}, ["config", "A-LRN", "vgg16"]),
        ({"config": "A", "crop_size": 100}, ["crop_size", "multiple of 32"]),
        ({"config": "A", "crop_size": 0}, ["crop_size"]),
        ({"config": "A", "width": 0}, ["width", "> 0"]),
        ({"config": "A", "width": -1.0}, ["width"]),
        ({"config": "A", "init": "orthogonal"}, ["init", "gaussian", "xavier", "kaiming"]),
        ({"config": "A", "num_classes": 0}, ["num_classes"]),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, names):
    with pytest.raises(ValueError) as excinfo:
        build_vgg(**kwargs)
    for name in names:
        assert name in str(excinfo.value)


def test_init_weights_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="init must be one of"):
        init_weights(VGG("A", width=0.1), "orthogonal")


def test_a_saved_net_loads_whole_and_a_bad_file_is_named(tmp_path):
    from vgg.weights import WEIGHTS_FILE, load_net, save_net

    net = build_vgg("C", num_classes=7, width=0.0625, crop_size=64, dropout=0.25).eval()
    loaded = load_net(save_net(net, tmp_path / "net"))
    assert loaded.arguments() == net.arguments() and not loaded.training
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), net(images))
    (tmp_path / "net" / WEIGHTS_FILE).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="holds no net"):
        load_net(tmp_path / "net")
