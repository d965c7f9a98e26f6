"""A session fixture: the smoke workflow run once, in this process on the
session's Ray, into its own SQLite MLflow store, for tests that read what a
finished workflow leaves (its runs, artifacts, registered models) rather than
how it gets there (tests/e2e/test_workflow.py runs the command itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class SmokeWorkflow:
    """What the finished smoke workflow left: its MLflow store and what `run` returned."""

    root: Path  # the store's folder: mlflow.db and mlruns/ (the artifacts)
    tracking_uri: str
    config: object  # pipeline.workflow.config.WorkflowConfig
    result: object  # pipeline.workflow.WorkflowResult

    def stage_run_id(self, key: str) -> str:
        """The MLflow run of the stage named `key` ("train/A-36", "tables", ...)."""
        [outcome] = [stage for stage in self.result.stages if stage.key == key]
        return outcome.run_id


@pytest.fixture(scope="session")
def smoke_workflow_store(new_store) -> tuple[Path, str]:
    """The smoke workflow's MLflow store (folder, tracking URI), its schema made
    now: an `mlflow server` may start on it while the workflow runs, and two
    processes must not create one SQLite schema at once."""
    from pipeline import tracking

    root, uri = new_store("smoke-workflow")
    tracking.client(uri).search_experiments()
    return root, uri


@pytest.fixture(scope="session")
def smoke_workflow(ray_local, demo_shards, smoke_workflow_store) -> SmokeWorkflow:
    """`vggpipe run --recipe smoke --set jitter_scale=none` on the session's
    prepared demo data (so no preprocessing), every stage finished. Fails the tests that use it when any
    stage fails, with the stage's error."""
    from pipeline.recipes import workflow_recipe
    from pipeline.workflow import run

    root, uri = smoke_workflow_store
    # No jittered net: a fine-tune after A-44, in series, whose 20 s make
    # test's budget cannot spare (tests/e2e/test_workflow.py makes the same cut).
    config = workflow_recipe(
        "smoke",
        [f"data={demo_shards}", f"work_dir={root / 'work'}", f"tracking_uri={uri}"]
        + ["jitter_scale=none"],
    )
    lines: list[str] = []
    result = run(config, echo=lines.append)
    (root / "workflow.log").write_text("\n".join(lines) + "\n")
    failed = [f"{stage.key}: {stage.status} {stage.error or ''}" for stage in result.failed]
    if failed:
        pytest.fail("the smoke workflow failed:\n" + "\n".join(failed + lines[-40:]))
    return SmokeWorkflow(root=root, tracking_uri=uri, config=config, result=result)
