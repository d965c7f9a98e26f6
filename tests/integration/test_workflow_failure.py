"""A stage that fails: the run says which, the stages after it are not started,
MLflow records both, and the driver exits non-zero."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import tracking
from pipeline.recipes import workflow_recipe
from pipeline.workflow import run, summary_lines


@pytest.mark.ray
def test_a_failed_stage_blocks_what_needs_it_and_fails_the_parent(
    ray_local, demo_shards, new_store
):
    # A dataset prepared without pixel statistics: planning accepts it (it has
    # a manifest), training refuses it, inside its stage's Ray task.
    tmp_path, uri = new_store("workflow-failure")
    data = tmp_path / "shards"
    shutil.copytree(demo_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["statistics"] = None
    (data / "manifest.json").write_text(json.dumps(manifest))
    config = workflow_recipe(
        "smoke", [f"data={data}", f"work_dir={tmp_path / 'work'}", f"tracking_uri={uri}"]
    )
    lines: list[str] = []

    result = run(config, echo=lines.append)

    outcomes = {stage.key: stage for stage in result.stages}
    assert outcomes["preprocess"].status == "ran"
    failed = outcomes["train/A-36"]
    assert failed.status == "failed" and "no pixel statistics" in failed.error
    blocked = {key for key, stage in outcomes.items() if stage.status == "blocked"}
    assert blocked == set(outcomes) - {"preprocess", "train/A-36"}
    assert not any(line.startswith("  started  train/B-36") for line in lines)
    assert any("FAILED   train/A-36" in line for line in lines)
    summary = "\n".join(summary_lines(result))
    assert "failed train/A-36: " in summary and "blocked tables" in summary

    assert tracking.get_run(result.parent_run_id, uri).info.status == "FAILED"
    assert tracking.get_run(failed.run_id, uri).info.status == "FAILED"
    # Nothing was started for the blocked stages: only preprocess and A have runs.
    children = tracking.child_runs(result.parent_run_id, uri)
    assert {run.info.run_id for run in children} == {
        outcomes["preprocess"].run_id,
        failed.run_id,
    }
    # Stage runs (made in Ray tasks) carry the source, user and commit of the
    # command that started the workflow, as its parent run does.
    parent_tags = tracking.get_run(result.parent_run_id, uri).data.tags
    context = {
        k: v for k, v in parent_tags.items() if k.startswith(("mlflow.source.", "mlflow.user"))
    }
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(context)
    for child in children:
        assert context.items() <= child.data.tags.items()
    # No net finished: none is registered.
    assert result.registered == {}
    assert tracking.client(uri).search_registered_models() == []
