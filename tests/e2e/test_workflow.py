"""The whole recipe as users run it: `vggpipe run --recipe smoke` against a real
MLflow tracking server on loopback, killed mid-way, started again, then run a
third time, as a Ray job through the Jobs API, with everything finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.demo_data import make_demo_data
from pipeline.recipes import workflow_recipe
from pipeline.workflow import net_alias, plan, workflow_name
from pipeline.workflow.scheduler import DONE_TAG, FINGERPRINT_TAG, STAGE_KEY_TAG
from tests.mlflow_server import MlflowServer
from tests.ray_head import clean_env

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "vggpipe"

# The whole smoke recipe twice (killed, then resumed) and a third time as a Ray
# job: close to two minutes here, more than make test's 8-minute budget can
# spare; make test-extra runs it and .ci/run runs both targets. make test keeps
# the workflow on Ray through tests/integration/test_workflow_failure.py.
pytestmark = [pytest.mark.slow, pytest.mark.extra]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(
        f"sqlite:///{root / 'mlflow.db'}",
        root / "server.log",
        "--artifacts-destination",
        str(root / "artifacts"),
    )
    try:
        yield server.wait_ready(), root / "artifacts"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, mlflow_server):
    uri, artifacts = mlflow_server
    root = tmp_path_factory.mktemp("workflow")
    make_demo_data(root / "source", per_class=40)
    command = [str(BIN / "vggpipe"), "run", "--recipe", "smoke", "--data", str(root / "source")]
    # No jittered net: a fine-tune from the larger-S net, a train stage like A-44,
    # whose minute the suite's budget cannot spare.
    command += ["--work-dir", str(root / "work"), "--set", "jitter_scale=none"]
    command += ["--address", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = uri
    config = workflow_recipe(
        "smoke",
        [f"data={root / 'source'}", f"work_dir={root / 'work'}", f"tracking_uri={uri}"]
        + ["jitter_scale=none"],
    )
    return {"uri": uri, "artifacts": artifacts, "root": root, "command": command, "env": env,
            "config": config}  # fmt: skip


def _stage_runs(uri: str) -> dict[str, list]:
    runs = tracking.client(uri).search_runs(
        [tracking.experiment_id(EXPERIMENT, uri)], filter_string=f"tags.`{STAGE_KEY_TAG}` != ''"
    )
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags[STAGE_KEY_TAG], []).append(run)
    return by_key


def _run(smoke, log_name: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        smoke["command"], cwd=smoke["root"], env=smoke["env"], capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    (smoke["root"] / log_name).write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def killed_then_resumed(smoke):
    """Kill the whole run (driver and its local Ray) once net A is trained and
    the next nets are under way, then run the same command again."""
    uri = smoke["uri"]
    log = smoke["root"] / "killed.log"
    with log.open("w") as output:
        driver = subprocess.Popen(
            smoke["command"], cwd=smoke["root"], env=smoke["env"], stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while True:
                done = {
                    key
                    for key, runs in _stage_runs(uri).items()
                    if any(DONE_TAG in run.data.tags for run in runs)
                }
                if "train/A-36" in done:
                    break
                if driver.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("net A never finished before the kill:\n" + log.read_text()[-4000:])
                time.sleep(1)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # no handler runs: a crash
            driver.wait()
    at_kill = _stage_runs(uri)
    resumed = _run(smoke, "resumed.log")
    return at_kill, resumed


def test_killed_run_resumes_reusing_finished_stages_and_completes(smoke, killed_then_resumed):
    at_kill, resumed = killed_then_resumed
    assert "reused   preprocess" in resumed.stdout
    assert "reused   train/A-36" in resumed.stdout
    assert "started  train/A-36 (" not in resumed.stdout
    runs = _stage_runs(smoke["uri"])
    stages = plan(smoke["config"])
    assert set(runs) == {stage.key for stage in stages}
    for stage in stages:
        # One run per stage: the killed ones were continued, not duplicated.
        [run] = runs[stage.key]
        assert run.info.status == "FINISHED", stage.key
        assert run.data.tags[DONE_TAG] == run.data.tags[FINGERPRINT_TAG] == stage.fingerprint
    a_before, a_after = at_kill["train/A-36"][0], runs["train/A-36"][0]
    assert a_after.info.end_time == a_before.info.end_time  # not trained again
    history = tracking.client(smoke["uri"]).get_metric_history(a_after.info.run_id, "epoch")
    assert len(history) == smoke["config"].base_epochs
    # B starts from net A, the larger S from A at the base S: wired by run id.
    b = runs["train/B-36"][0]
    assert b.data.params["init_from"] == a_after.info.run_id
    assert runs["train/A-44"][0].data.params["resume_from"] == a_after.info.run_id


def test_stages_nest_under_one_parent_run_on_the_tracking_server(smoke, killed_then_resumed):
    uri = smoke["uri"]
    parent = tracking.find_run(workflow_name(smoke["config"]), EXPERIMENT, uri)
    assert parent is not None and parent.info.status == "FINISHED"
    children = tracking.child_runs(parent.info.run_id, uri)
    assert {run.data.tags[STAGE_KEY_TAG] for run in children} == set(_stage_runs(uri))
    assert parent.data.metrics["stages_failed"] == 0
    tables = tracking.Run(parent.info.run_id, uri).read_artifact_text("tables.md")
    for net in ("A-36", "B-36", "A-44", "A-36 + B-36"):
        assert f"| {net} " in tables
    # The server stored the artifacts (models included), not this process.
    assert any(smoke["artifacts"].rglob("MLmodel"))
    # The evaluation tables went to each evaluation stage's run as well.
    evaluation = _stage_runs(uri)["evaluate/B-36"][0]
    assert evaluation.data.metrics  # eval/<protocol>/Q<scales>/top1_error ...
    # Each net registered once as vgg-<config>, its alias naming the workflow
    # and the net, though the workflow ran twice (killed, then resumed).
    client, name = tracking.client(uri), workflow_name(smoke["config"])
    for net, config in (("A-36", "A"), ("B-36", "B"), ("A-44", "A")):
        version = client.get_model_version_by_alias(f"vgg-{config}", net_alias(name, net))
        assert version.run_id == _stage_runs(uri)[f"train/{net}"][0].info.run_id
    assert len(client.search_model_versions("name = 'vgg-A'")) == 2


def test_running_again_as_a_ray_job_reuses_every_stage(smoke, killed_then_resumed, ray_head):
    """The third run goes the way of a cluster: `python -m jobs.run` submitted to
    a Ray head through the Jobs API (`vggpipe submit run`), logs followed."""
    before = sum(len(runs) for runs in _stage_runs(smoke["uri"]).values())
    env = clean_env() | {"MLFLOW_TRACKING_URI": smoke["uri"]}
    run_args = smoke["command"][2:-2]  # the same arguments, the head's Ray instead of "local"
    again = subprocess.run(
        [str(BIN / "vggpipe"), "submit", "run", "--address", ray_head, "--working-dir", str(REPO)]
        + ["--", *run_args],
        cwd=smoke["root"], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (smoke["root"] / "again.log").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "succeeded" in again.stderr
    stages = plan(smoke["config"])
    assert f"0 stage(s) run, {len(stages)} reused" in again.stdout
    assert "started" not in again.stdout
    assert sum(len(runs) for runs in _stage_runs(smoke["uri"]).values()) == before
    assert "| A-36 + B-36 " in again.stdout  # the tables come back from MLflow
