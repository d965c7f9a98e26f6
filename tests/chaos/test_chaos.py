"""Kills at random points, then the same command again: nothing lost, nothing
doubled.

Round i kills the command `TARGETS[i % 4]` (preprocess, a training run, a
sweep, the workflow's smoke recipe) after a delay drawn from a seeded
generator, with a signal drawn from `KILLS` (SIGKILL of the driver and its
local Ray, SIGINT to the driver, or, for training, SIGKILL of a Ray Train
worker), then runs the same command again to the end and checks the record:

- every shard verifies, no temporary file is left behind, and no lease is
  held by a live process;
- no MLflow run is left RUNNING or duplicated (one per name, stage kind and
  parent), and every metric history holds each step once;
- a training run ends with the weights of an uninterrupted run of the same
  settings.

`make test` runs one round (`--chaos-rounds`, default 1: a preprocess killed
at a random point); `pytest tests/chaos --chaos-rounds 20` runs five of each.
`--chaos-seed` changes the draws. Every command runs in its own process with
its own local Ray (`--address local`), as a user's would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch

from pipeline import checkpoints, tracking
from pipeline.lease import LEASE_FILE, holder_alive
from pipeline.shards import TEMP_MARKER, ShardStore
from tests.commands import VGGPIPE, user_env

TARGETS = ("preprocess", "train", "sweep", "workflow")
KILLS = ("driver-sigkill", "driver-sigint", "worker-sigkill")
# Seconds after the start in which the kill lands, per target: from Ray's
# start-up to about the end of an uninterrupted run here (a kill drawn after
# the end finds the command finished, and the round checks a clean run).
KILL_WINDOW = {"preprocess": (2, 12), "train": (6, 30), "sweep": (8, 70), "workflow": (8, 90)}


@dataclass
class World:
    root: Path
    source: str  # demo images in the ILSVRC layout
    shards: str  # the session's prepared demo digits
    uri: str  # MLflow store of every round

    def env(self) -> dict[str, str]:
        return user_env() | {"MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_shards) -> World:
    from pipeline.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("chaos")
    make_demo_data(root / "source", per_class=20)
    return World(root, str(root / "source"), demo_shards, f"sqlite:///{root / 'mlflow.db'}")


def _command(target: str, world: World, name: str) -> list[str]:
    runs = str(world.root / "runs")
    train = ["--set", f"storage_path={runs}", "--set", f"tracking_uri={world.uri}"]
    if target == "preprocess":
        return ["preprocess", world.source, str(world.root / name), "--max-short-side", "64",
                "--shard-rows", "50", "--no-progress"]  # fmt: skip
    if target == "train":
        return ["train", "--recipe", "smoke", "--data", world.shards, "--set", f"run_name={name}",
                *train, "--set", "data_cpus_per_task=0.25"]  # fmt: skip
    if target == "sweep":
        return ["tune", "--recipe", "tune-smoke", "--data", world.shards, "--set", f"name={name}",
                "--set", "lrs=0.002,0.00001", "--set", "max_concurrent_trials=1", *train]  # fmt: skip
    # A seed of its own: the stage cache spans workflows, and a round that
    # reused the last round's nets would have nothing left to kill.
    return ["run", "--recipe", "smoke", "--data", world.source, "--run-name", name,
            "--work-dir", str(world.root / name), "--set", "jitter_scale=none",
            "--train-set", f"seed={zlib.crc32(name.encode())}"]  # fmt: skip


def _kill(driver: subprocess.Popen, kill: str) -> str:
    """Deliver `kill`; returns what was done (a worker kill with no worker alive
    falls back to the driver)."""
    if kill == "worker-sigkill":
        workers = [
            p for p in psutil.Process(driver.pid).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline() or [])
        ] if driver.poll() is None else []  # fmt: skip
        if workers:
            workers[0].kill()
            return "worker-sigkill"
        kill = "driver-sigkill"
    if kill == "driver-sigint":
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(timeout=120)  # Ctrl-C must end the command
        except subprocess.TimeoutExpired:
            pytest.fail("the driver ignored SIGINT for 2 minutes")
        return kill
    os.killpg(driver.pid, signal.SIGKILL)  # no handler runs: a crash
    return kill


def _run_killed_then_again(target: str, world: World, name: str, delay: float, kill: str) -> str:
    command = [VGGPIPE, *_command(target, world, name), "--address", "local"]
    log = world.root / f"{name}.log"
    with log.open("w") as output:
        driver = subprocess.Popen(command, env=world.env(), cwd=world.root, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + delay
        while driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        done = "finished before the kill" if driver.poll() is not None else _kill(driver, kill)
        # After a worker's kill Ray Train restarts the worker group and the run goes on.
        driver.wait(timeout=900)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # what a killed driver's Ray left
    again = subprocess.run(command, env=world.env(), cwd=world.root, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    (world.root / f"{name}.again.log").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, f"{name} ({done} at {delay:.1f} s): " + again.stderr[-3000:]
    return done


def _check_record(world: World) -> None:
    client = tracking.client(world.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    owners = Counter(
        (r.info.run_name, r.data.tags.get(tracking.STAGE_TAG), r.data.tags.get(tracking.PARENT_TAG))
        for r in runs
    )
    assert not [owner for owner, count in owners.items() if count > 1], "a run was duplicated"
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{run.info.run_name}: {key} logged twice"


def _check_files(world: World) -> None:
    assert not [p for p in world.root.rglob("*") if TEMP_MARKER in p.name]
    # A lease whose holder died stays until the next command takes it over (a
    # trial ASHA stopped is ended without running its cleanup); none may be
    # held by a live process once the command is done.
    held = [
        lease for lease in world.root.rglob(LEASE_FILE)
        if holder_alive(json.loads(lease.read_text()))
    ]  # fmt: skip
    assert not held, held
    for manifest in world.root.rglob("manifest.json"):
        assert ShardStore(str(manifest.parent)).verify() == [], manifest.parent


def _final_weights(world: World, name: str) -> dict[str, torch.Tensor]:
    run = tracking.find_run(name, "vggpipe", world.uri, stage="train")
    final = run.data.tags[tracking.FINAL_CHECKPOINT_TAG]
    return checkpoints.load(final).model.state_dict()


@pytest.fixture(scope="module")
def uninterrupted_weights(world: World) -> dict[str, torch.Tensor]:
    """The smoke recipe trained once without a kill: every killed training must
    end with these weights."""
    done = subprocess.run([VGGPIPE, *_command("train", world, "chaos-uninterrupted"),
                           "--address", "local"], env=world.env(), cwd=world.root,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return _final_weights(world, "chaos-uninterrupted")


def pytest_generate_tests(metafunc):
    if "chaos_round" in metafunc.fixturenames:
        rounds = metafunc.config.getoption("chaos_rounds")
        metafunc.parametrize("chaos_round", range(rounds), ids=lambda i: f"round-{i}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_killed_command_run_again_loses_and_doubles_nothing(chaos_round, world, request):
    draw = random.Random(f"{request.config.getoption('chaos_seed')}-{chaos_round}")
    target = TARGETS[chaos_round % len(TARGETS)]
    kill = draw.choice([k for k in KILLS if k != "worker-sigkill" or target == "train"])
    delay = draw.uniform(*KILL_WINDOW[target])
    name = f"chaos-{chaos_round}-{target}"
    done = _run_killed_then_again(target, world, name, delay, kill)
    print(f"round {chaos_round}: {target}, {done} at {delay:.1f} s")
    _check_record(world)
    _check_files(world)
    if target == "train":
        expected = request.getfixturevalue("uninterrupted_weights")
        for key, tensor in _final_weights(world, name).items():
            assert torch.equal(tensor, expected[key]), key
