"""A command touches only the MLflow runs it owns: a refused command leaves a
finished run as it was (status, tags, end time), and a run name another stage
kind holds is not reopened."""

from __future__ import annotations

import pytest

from pipeline import tracking
from pipeline.config import ConfigError
from pipeline.recipes import recipe, workflow_recipe
from tests.commands import user_env, vggpipe

NAME = "base"


@pytest.fixture
def finished_train_run(new_store, demo_shards):
    root, uri = new_store("ownership")
    config = recipe("smoke", [f"data={demo_shards}", f"run_name={NAME}", f"tracking_uri={uri}"])
    tags = {tracking.STAGE_TAG: "train", tracking.DATASET_TAG: "a" * 64}
    run = tracking.start_run(NAME, config.experiment, uri=uri, tags=tags, config=config)
    run.end("FINISHED")
    return {"uri": uri, "config": config, "run": run.get(), "data": demo_shards, "root": root}


def _unchanged(before, uri: str) -> None:
    after = tracking.get_run(before.info.run_id, uri)
    assert after.info.status == before.info.status == "FINISHED"
    assert after.info.end_time == before.info.end_time
    assert after.data.tags == before.data.tags
    assert after.data.params == before.data.params


def test_other_settings_under_the_name_are_refused_before_anything_is_written(
    finished_train_run,
):
    before, uri = finished_train_run["run"], finished_train_run["uri"]
    changed = recipe("smoke", [f"run_name={NAME}", f"tracking_uri={uri}", "lr=0.5"])
    tags = {tracking.STAGE_TAG: "train", tracking.DATASET_TAG: "b" * 64}
    with pytest.raises(ConfigError, match="other settings: lr"):
        tracking.start_run(NAME, changed.experiment, uri=uri, tags=tags, config=changed)
    _unchanged(before, uri)


def test_the_train_command_refused_in_one_line_leaves_the_run(finished_train_run):
    before, uri = finished_train_run["run"], finished_train_run["uri"]
    result = vggpipe(
        "train", "--recipe", "smoke", "--data", finished_train_run["data"],
        "--set", f"run_name={NAME}", "--set", f"tracking_uri={uri}", "--set", "lr=0.5",
        env=user_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "other settings" in result.stderr and "Traceback" not in result.stderr
    _unchanged(before, uri)


def test_a_workflow_of_the_same_name_gets_its_own_run(finished_train_run):
    before, uri = finished_train_run["run"], finished_train_run["uri"]
    workflow = workflow_recipe("smoke", [f"run_name={NAME}", f"tracking_uri={uri}"])
    tags = {tracking.STAGE_TAG: "workflow"}
    run = tracking.start_run(NAME, workflow.experiment, uri=uri, tags=tags, config=workflow)
    assert run.run_id != before.info.run_id
    run.end("FINISHED")
    _unchanged(before, uri)
