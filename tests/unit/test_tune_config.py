"""Sweep configs fail early, naming the field; recipes, --set overrides, the
search space, each trial's config and the resources a trial needs. No Ray
instance: only pure functions and Tune's search-space constructors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.config import ConfigError, parse_train_scale, train_scale_label
from pipeline.recipes import TUNE_RECIPES, tune_recipe
from pipeline.train.config import TrainConfig
from pipeline.tune.config import TuneConfig, apply_tune_overrides
from pipeline.tune.driver import (
    concurrent_trials,
    expected_trials,
    search_space,
    trial_config,
    trial_resources,
)


def test_every_sweep_recipe_builds_a_valid_config():
    for name in TUNE_RECIPES:
        config = tune_recipe(name)
        assert config.recipe == name and config.name == name
        assert config.grace_period < config.train.epochs
    smoke = tune_recipe("tune-smoke")
    # Acceptance asks for at least four trials with a fixed and a jittered scale.
    assert len(smoke.lrs) * len(smoke.scales) >= 4
    assert (36, 36) in smoke.scales and any(low < high for low, high in smoke.scales)
    assert tune_recipe("tune-paper-a").scales == ((256, 256), (384, 384), (256, 512))


def test_overrides_reach_sweep_fields_grids_and_the_base_training_config():
    config = tune_recipe(
        "tune-smoke",
        [
            "name=lr-scan",
            "lrs=",
            "lr_range=1e-4:1e-1",
            "num_samples=3",
            "scales=36, 40:48, 36-44",
            "grid.width=0.0625,0.125",
            "grid.init=gaussian,xavier",
            "epochs=5",
            "train.max_steps_per_epoch=2",
            "grace_period=2",
            "max_concurrent_trials=1",
            "alias=best",
        ],
    )
    assert config.name == "lr-scan" and config.lrs == () and config.lr_range == (1e-4, 1e-1)
    assert config.num_samples == 3
    assert config.scales == ((36, 36), (40, 48), (36, 44))
    assert config.grid == (("width", (0.0625, 0.125)), ("init", ("gaussian", "xavier")))
    assert config.train.epochs == 5 and config.train.max_steps_per_epoch == 2
    assert config.grace_period == 2 and config.max_concurrent_trials == 1
    assert config.alias == "best" and config.model_name == "lr-scan"


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        (["lrs=0.1,-0.01"], "lrs"),
        (["lr_range=0.1:0.01"], "lrs"),  # both a grid and a range
        (["lrs=", "lr_range=0.1:0.01"], "lr_range"),
        (["lrs="], "lrs"),  # neither
        (["scales=30"], "scales"),  # below the crop size
        (["scales=48:40"], "scales"),
        (["grid.lr=0.1,0.2"], "grid"),  # the sweep owns lr
        (["grid.epochs=2,4"], "grid"),  # ASHA's budget is one value
        (["grid.width=-1"], "width"),  # each grid point must be a valid TrainConfig
        (["grace_period=3"], "grace_period"),  # not before the last epoch (3)
        (["epochs=1", "grace_period=1"], "train.epochs"),
        (["reduction_factor=1"], "reduction_factor"),
        (["num_samples=0"], "num_samples"),
        (["max_concurrent_trials=0"], "max_concurrent_trials"),
        (["name=a/b"], "name"),
        (["alias=3"], "alias"),
        (["register_as=vgg-A"], "register_as"),  # the sweep registers its own champion
        (["trial_driver_cpus=0"], "trial_driver_cpus"),
    ],
)
def test_bad_values_fail_naming_the_field(overrides, field_name):
    with pytest.raises(ConfigError, match=rf"^{field_name} "):
        tune_recipe("tune-smoke", overrides)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("colour=blue", "unknown field 'colour'"),
        ("grid.colour=1,2", "not a training field"),
        ("lrs=fast", "lrs takes comma-separated numbers"),
        ("lr_range=0.1", "lr_range takes low:high"),
        ("scales=big", "scales takes S or Smin:Smax"),
        ("epochs=many", "epochs takes a int"),
        ("lrs", "--set takes key=value"),
    ],
)
def test_malformed_overrides_say_what_was_expected(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_tune_overrides(tune_recipe("tune-smoke"), [assignment])


def test_scales_parse_and_print_as_the_paper_writes_them():
    assert parse_train_scale("256") == (256, 256)
    assert parse_train_scale("256:512") == parse_train_scale("256-512") == (256, 512)
    assert train_scale_label((384, 384)) == "384"
    assert train_scale_label((256, 512)) == "[256;512]"


def test_config_round_trips_through_json_and_logs_flat():
    config = tune_recipe("tune-smoke", ["grid.width=0.0625,0.125"])
    again = TuneConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    params = config.flat_params()
    assert params["lrs"] == "0.002,1e-05" and params["scales"] == "36,36:44"
    assert params["grid"] == "width=0.0625,0.125"
    assert params["train.epochs"] == "3" and params["train.recipe"] == "tune-smoke"
    assert all(isinstance(value, str) for value in params.values())


def test_only_settings_that_change_the_sweeps_result_are_fingerprinted():
    # A rerun under the same name is refused only when a fingerprinted param
    # differs: more trials at once or more training workers resume the sweep.
    config = tune_recipe("tune-smoke", ["grid.width=0.0625,0.125"])
    params, fingerprint = config.flat_params(), set(config.fingerprint_params())
    assert fingerprint <= set(params)
    assert {
        "lrs", "lr_range", "scales", "grid", "num_samples", "seed", "grace_period",
        "reduction_factor", "train.lr", "train.epochs", "train.width", "train.data",
    } <= fingerprint  # fmt: skip
    assert fingerprint.isdisjoint(
        {
            "name", "recipe", "max_concurrent_trials", "trial_driver_cpus",
            "registered_model", "alias", "train.num_workers", "train.micro_batch_size",
            "train.cpus_per_worker", "train.use_gpu", "train.run_name",
            "train.storage_path", "train.tracking_uri", "train.parent_run_id",
        }
    )  # fmt: skip


def test_search_space_puts_lr_last_so_that_neighbouring_trials_differ_in_lr():
    from ray import tune

    grid = tune_recipe("tune-smoke", ["grid.width=0.0625,0.125"])
    space = search_space(grid)
    assert list(space) == ["width", "scale", "lr"]
    assert space["lr"] == tune.grid_search([0.002, 1e-05])
    assert space["scale"] == tune.grid_search(["36", "36:44"])

    drawn = search_space(tune_recipe("tune-demo"))
    assert isinstance(drawn["lr"], tune.search.sample.Float)
    assert (drawn["lr"].lower, drawn["lr"].upper) == (1e-4, 3e-2)
    # A sweep without scales keeps the base config's scale.
    plain = dataclasses.replace(grid, scales=())
    assert search_space(plain)["scale"] == tune.grid_search(["36"])


def test_expected_trials_is_the_product_of_the_grids_times_num_samples():
    assert expected_trials(tune_recipe("tune-smoke")) == 4
    assert expected_trials(tune_recipe("tune-smoke", ["grid.width=0.0625,0.125,0.25"])) == 12
    assert expected_trials(tune_recipe("tune-demo")) == 4 * 2  # draws x scales
    assert expected_trials(tune_recipe("tune-smoke", ["scales=", "num_samples=3"])) == 6


def test_trial_config_is_the_base_with_the_trials_values_nested_under_the_sweep():
    base = tune_recipe("tune-smoke").train
    config = trial_config(
        base,
        {"lr": 0.01, "scale": "36:44", "width": 0.0625},
        sweep="lr-scan",
        trial_id="a1b2c_00003",
        parent_run_id="0" * 32,
        storage_path="/runs/lr-scan/train",
    )
    assert (config.lr, config.scale_min, config.scale_max, config.width) == (0.01, 36, 44, 0.0625)
    assert config.run_name == "lr-scan-a1b2c_00003" and config.name == "lr-scan-a1b2c_00003"
    assert config.parent_run_id == "0" * 32 and config.storage_path == "/runs/lr-scan/train"
    assert dataclasses.replace(
        config, lr=base.lr, scale_min=36, scale_max=36, width=base.width
    ) == dataclasses.replace(
        base,
        run_name=config.run_name,
        parent_run_id=config.parent_run_id,
        storage_path=config.storage_path,
    )


def test_concurrent_trials_follow_the_cluster_and_the_most_a_grid_point_needs():
    smoke = tune_recipe("tune-smoke")
    # Driver 0.1 + one worker of 0.5 CPU + one 0.25-CPU decode task.
    assert trial_resources(smoke) == {"CPU": pytest.approx(0.85)}
    assert concurrent_trials({"CPU": 2.0}, trial_resources(smoke)) == 2
    assert concurrent_trials({"CPU": 16.0}, trial_resources(smoke)) == 18  # 16 / 0.85
    wide = tune_recipe("tune-smoke", ["grid.num_workers=1,2", "grid.global_batch_size=32"])
    assert trial_resources(wide) == {"CPU": pytest.approx(1.35)}
    assert concurrent_trials({"CPU": 2.0}, trial_resources(wide)) == 1

    paper = tune_recipe("tune-paper-a")  # 4 GPU workers of 4 CPUs each per trial
    needs = trial_resources(paper)
    assert needs == {"CPU": pytest.approx(17.1), "GPU": 4.0}
    assert concurrent_trials({"CPU": 64.0, "GPU": 8.0}, needs) == 2
    assert concurrent_trials({"CPU": 20.0, "GPU": 8.0}, needs) == 1
    with pytest.raises(ConfigError, match="one trial needs 17.1 CPU, 4 GPU"):
        concurrent_trials({"CPU": 64.0, "GPU": 2.0}, needs)
    # Exact fits count despite float sums (0.1 + 0.5 + 0.4 is not exactly 1.0).
    exact = dataclasses.replace(
        smoke, train=dataclasses.replace(smoke.train, data_cpus_per_task=0.4)
    )
    assert concurrent_trials({"CPU": 2.0}, trial_resources(exact)) == 2


def test_config_from_python_takes_lists_and_strings_like_json_gives_them():
    config = TuneConfig(
        train={**TrainConfig(epochs=4).to_dict()},
        lrs=[0.01, 0.001],
        scales=["256", [256, 512], 384],
        grid=[["width", [0.5, 1.0]]],
    )
    assert config.train == TrainConfig(epochs=4)
    assert config.lrs == (0.01, 0.001)
    assert config.scales == ((256, 256), (256, 512), (384, 384))
    assert config.grid == (("width", (0.5, 1.0)),)
    with pytest.raises(ConfigError, match="^registered_model "):
        TuneConfig(lrs=(0.01,), registered_model=" ")
