"""Run identity in a real MLflow store: a config printed by --print-config and
read back by --config opens the recipe's run again (same params, nothing
refused), and so does a run whose params were logged in the form used before
params became readable ("('B',)"); another setting is still refused."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline import tracking
from pipeline.cli import build_parser, main, workflow
from pipeline.config import ConfigError, legacy_param_value
from pipeline.recipes import workflow_recipe


def _start(config, uri: str):
    return tracking.start_run(
        config.run_name, config.experiment, uri=uri, tags={tracking.STAGE_TAG: "workflow"},
        config=config,
    )  # fmt: skip


def test_a_printed_config_and_an_earlier_runs_params_open_the_same_run(new_store, tmp_path, capsys):
    _, uri = new_store("cli-config-runs")
    argv = ["run", "--recipe", "smoke", "--data", "/d", "--run-name", "w", "--tracking-uri", uri]
    assert main([*argv, "--print-config"]) == 0
    (tmp_path / "w.yaml").write_text(capsys.readouterr().out)
    recipe_config = workflow_recipe("smoke", ["data=/d", "run_name=w", f"tracking_uri={uri}"])
    first = _start(recipe_config, uri)
    first.end()
    args = build_parser().parse_args(["run", "--config", str(tmp_path / "w.yaml")])
    from_file = workflow._workflow_config(args)
    assert from_file == recipe_config
    again = _start(from_file, uri)
    again.end()
    assert again.run_id == first.run_id
    assert tracking.get_run(first.run_id, uri).data.params["from_a"] == "B"

    # A run logged before params became readable: tuples as Python wrote them.
    earlier_config = dataclasses.replace(recipe_config, run_name="earlier")
    earlier = tracking.start_run(
        "earlier", earlier_config.experiment, uri=uri, tags={tracking.STAGE_TAG: "workflow"}
    )
    earlier.log_params(earlier_config.flat_params(legacy_param_value))
    earlier.end()
    assert tracking.get_run(earlier.run_id, uri).data.params["from_a"] == "('B',)"
    assert _start(earlier_config, uri).run_id == earlier.run_id
    with pytest.raises(ConfigError, match="other settings: from_a"):
        _start(dataclasses.replace(earlier_config, from_a=("C",)), uri)
