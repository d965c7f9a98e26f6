"""A command touches only the MLflow runs it owns: a refused command leaves a
finished run as it was (status, tags, end time), a run name another stage kind
holds is not reopened, a live command's run is not shared, and a worker group
the cluster cannot hold is refused before a run is opened (or, when told to
wait for nodes, stopped by Ctrl-C as KILLED)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import tracking
from pipeline.config import ConfigError
from pipeline.lease import LEASE_FILE, STALE_SECONDS, LeaseHeld, RunLease, holder_alive
from pipeline.recipes import recipe, workflow_recipe
from tests.commands import VGGPIPE, one_error_line, user_env, vggpipe

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


def _train_args(data: str, name: str, storage, uri: str, *sets: str) -> list[str]:
    args = ["train", "--recipe", "smoke", "--data", data, "--set", f"run_name={name}"]
    args += ["--set", f"storage_path={storage}", "--set", f"tracking_uri={uri}"]
    for value in sets:
        args += ["--set", value]
    return args


def test_a_live_commands_run_is_refused_and_a_dead_ones_is_taken_over(
    new_store, demo_shards, tmp_path
):
    """A process holds run `dup` as `vggpipe train` does while it trains; a
    second `vggpipe train --set run_name=dup` is refused in one line and writes
    nothing; once the holder is killed, the run is free again."""
    root, uri = new_store("lease")
    storage = root / "runs"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.lease import RunLease; "
         "RunLease(sys.argv[1], 'dup').acquire(); print('held', flush=True); time.sleep(300)",
         str(storage / "dup")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        second = vggpipe(*_train_args(demo_shards, "dup", storage, uri))
        assert second.returncode == 2
        line = one_error_line(second.stderr, "train")
        assert "in use by another live command" in line and f"pid {holder.pid}" in line
        assert tracking.find_run("dup", "vggpipe", uri) is None  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lease is taken over, then released.
    assert (storage / "dup" / LEASE_FILE).exists()
    # While it is held, even a second take by the same process is refused.
    with RunLease(str(storage / "dup"), "dup"), pytest.raises(LeaseHeld):
        RunLease(str(storage / "dup"), "dup").acquire()
    assert not (storage / "dup" / LEASE_FILE).exists()


def test_another_machines_holder_lives_while_it_renews():
    elsewhere = {"host": "another-host", "boot_id": "x", "pid": 1, "pid_start": "1"}
    assert holder_alive(elsewhere | {"renewed": time.time()})
    assert not holder_alive(elsewhere | {"renewed": time.time() - STALE_SECONDS - 1})


def test_workers_the_cluster_cannot_hold_are_refused_before_a_run_opens(
    ray_local, new_store, demo_shards
):
    root, uri = new_store("too-wide")
    address = ray_local.get_runtime_context().gcs_address  # the session's 2-CPU Ray
    result = vggpipe(
        *_train_args(demo_shards, "wide", root / "runs", uri, "num_workers=8"),
        "--address", address, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result.stderr, "train")
    assert "num_workers=8" in line and "room for 4 worker(s)" in line
    assert tracking.find_run("wide", "vggpipe", uri) is None


def test_ctrl_c_while_waiting_for_nodes_exits_130_and_the_run_is_killed(
    ray_local, new_store, demo_shards
):
    root, uri = new_store("waiting")
    address = ray_local.get_runtime_context().gcs_address
    command = _train_args(demo_shards, "waits", root / "runs", uri, "num_workers=8")
    waiting = subprocess.Popen(
        [VGGPIPE, *command, "--set", "wait_for_resources=true", "--address", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env(),
    )  # fmt: skip
    try:
        for line in waiting.stderr:
            if "Waiting for Ray to add nodes" in line:
                break
        deadline = time.monotonic() + 60
        while tracking.find_run("waits", "vggpipe", uri) is None:
            assert time.monotonic() < deadline, "the waiting run never opened"
            time.sleep(0.5)
        os.kill(waiting.pid, signal.SIGINT)
        waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 130
    assert tracking.find_run("waits", "vggpipe", uri).info.status == "KILLED"
    assert not (root / "runs" / "waits" / LEASE_FILE).exists()
