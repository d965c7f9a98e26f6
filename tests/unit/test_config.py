"""Configs fail early, naming the field; recipes and overrides."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, apply_overrides, flat_params
from pipeline.recipes import RECIPES, recipe
from pipeline.train.config import TrainConfig
from pipeline.train.loop import PlateauSchedule
from tests.commands import vggpipe


def test_every_recipe_builds_a_valid_config():
    for name in RECIPES:
        config = recipe(name)
        assert config.recipe == name
    assert recipe("paper-d-384").scale_min == 384 and recipe("paper-d-384").lr == 1e-3
    jitter = recipe("paper-e-jitter")
    assert jitter.train_scale == (256, 512) and jitter.check_scale == 384
    assert recipe("paper-a-256").train_scale == 256 and recipe("paper-a-256").check_scale == 256
    assert {"paper-a-256", "paper-b-256", "paper-c-384", "paper-d-jitter", "demo", "smoke"} <= set(
        RECIPES
    )


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        (["lr=-0.1"], "lr"),
        (["num_workers=3", "global_batch_size=256"], "global_batch_size"),
        (["micro_batch_size=5"], "micro_batch_size"),
        (["config=F"], "config"),
        (["scale_min=16"], "scale_min"),
        (["scale_max=30"], "scale_max"),
        (["decode_on=tpu"], "decode_on"),
        (["epochs=0"], "epochs"),
        (["init=orthogonal"], "init"),
        (["crop_size=33"], "crop_size"),
    ],
)
def test_bad_values_name_their_field(overrides, field_name):
    with pytest.raises(ConfigError) as excinfo:
        recipe("smoke", overrides)
    assert str(excinfo.value).startswith(f"{field_name} must be")


def test_overrides_parse_by_field_type():
    config = apply_overrides(
        TrainConfig(),
        [
            "config=D",
            "lr=0.005",
            "bf16=true",
            "epochs=3",
            "test_scale=300",
            "init_from=abc",
            "width=0.5",
        ],
    )
    assert (config.lr, config.bf16, config.epochs, config.test_scale, config.width) == (
        0.005,
        True,
        3,
        300,
        0.5,
    )
    assert apply_overrides(config, ["test_scale=none"]).test_scale is None
    with pytest.raises(ConfigError, match="unknown config field 'lrate'"):
        apply_overrides(config, ["lrate=1"])
    with pytest.raises(ConfigError, match="epochs takes a int"):
        apply_overrides(config, ["epochs=many"])
    with pytest.raises(ConfigError, match="unknown recipe 'paper-f-256'"):
        recipe("paper-f-256")


def test_config_round_trips_and_flattens():
    config = recipe("demo", ["data=/tmp/x"])
    assert TrainConfig.from_dict(config.to_dict()) == config
    params = flat_params(config)
    assert params["lr"] == str(config.lr) and params["init_from"] == ""
    assert config.batch_size_per_worker == config.global_batch_size // config.num_workers


def test_cli_rejects_a_bad_config_before_any_ray_work(tmp_path):
    for overrides, field_name in (
        (["--set", "lr=-1"], "lr"),
        (["--set", "num_workers=3"], "global_batch_size"),
    ):
        result = vggpipe(
            "train", "--recipe", "smoke", "--data", str(tmp_path), *overrides, cwd=tmp_path
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{field_name} must be" in lines[0]
        assert "Ray" not in result.stdout + result.stderr
    unknown = vggpipe("train", "--recipe", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown recipe 'nope'" in unknown.stderr
    missing = vggpipe("train", "--recipe", "smoke", "--data", str(tmp_path / "none"), cwd=tmp_path)
    assert missing.returncode == 2 and "manifest.json" in missing.stderr
    assert not (tmp_path / "mlflow.db").exists(), "nothing is written for a bad input"


def test_plateau_schedule_divides_then_stops():
    schedule = PlateauSchedule(lr=0.01, factor=0.1, patience=1, max_reductions=2)
    for error in (0.5, 0.4, 0.4, 0.4):  # improves, then two epochs without improvement
        schedule.step(error)
    assert schedule.lr == pytest.approx(0.001) and schedule.reductions == 1
    schedule.step(0.3)
    assert schedule.best_error == 0.3 and schedule.epochs_since_best == 0
    for error in (0.3, 0.3):
        schedule.step(error)
    assert schedule.lr == pytest.approx(0.0001) and not schedule.finished
    for error in (0.3, 0.3):
        schedule.step(error)
    assert schedule.finished


def test_the_demo_crop_gives_dense_evaluation_several_score_windows():
    """At 32-pixel crops FC1 is a 1x1 conv and dense evaluation at Q = S sees one
    window at the top left: the demo must crop at least 64 pixels."""
    config = recipe("demo")
    assert config.crop_size >= 64
    assert config.scale_min >= config.crop_size
