"""The README's cluster path walked for real: three hosts (network namespaces),
S3 storage, a tracking server, a node lost during training.

The head (token authentication on) and a worker node each have their own
working and temp folders; the services host runs SeaweedFS's S3 gateway and
`mlflow server` with its artifacts in S3. The demo source, the shards, the
checkpoints and MLflow's artifacts are all `s3://` objects; the S3 keys are in
the Ray nodes' and the server's environment only. From this machine's own
namespace, `vggpipe submit run -- --recipe smoke --data s3://... --work-dir
s3://...` goes to the head's Jobs API with every net trained by two workers,
one on each node. While a net trains, the worker node's raylet is killed; the
node comes back as a new node, the same command is submitted again and the
workflow ends with every stage run once, FINISHED, under one parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline import tracking
from pipeline.demo_data import make_demo_data
from pipeline.recipes import workflow_recipe
from pipeline.workflow import plan, workflow_name
from pipeline.workflow.scheduler import DONE_TAG, FINGERPRINT_TAG, STAGE_KEY_TAG
from tests.cluster.hosts import (
    BIN,
    BUCKET,
    HEAD,
    REPO,
    SERVICES,
    WORKER,
    Hosts,
    namespaces_unavailable,
    wait_for,
)

# Minutes: the hosts start, the workflow runs once with a node lost, then again.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

EXPERIMENT = "vggpipe"
SOURCE, WORK = f"s3://{BUCKET}/source", f"s3://{BUCKET}/work"
# Two workers a net on 2-CPU nodes: 1.2 CPUs each cannot share a node, so Ray
# Train puts one on each; the 0.8 left on each node runs Ray Data's decode tasks.
TRAIN_OVERRIDES = "num_workers=2,cpus_per_worker=1.2,data_cpus_per_task=0.25"
# A, then B from A's checkpoint in S3, their evaluations, the ensemble and the
# tables; no fine-tune at a larger S (each is a training like B's: a minute).
WORKFLOW_SETTINGS = ["large_scale=none", "jitter_scale=none", f"train_overrides={TRAIN_OVERRIDES}"]
JOB_SECONDS = 600


@pytest.fixture(scope="module")
def hosts():
    if reason := namespaces_unavailable():
        pytest.skip(f"three hosts need network namespaces: {reason}")
    # Short: Ray's socket paths under each node's temp folder must fit in 107 bytes.
    cluster = Hosts(Path(tempfile.mkdtemp(prefix="vgc-", dir="/tmp")))
    began = time.monotonic()
    try:
        cluster.build_network()
        cluster.start_object_store()
        cluster.start_mlflow()
        cluster.start_ray(HEAD)
        # The data goes up while the tracking server and Ray start (tens of seconds).
        cluster.wait_for_object_store()
        upload_source(cluster)
        wait_for("the head's GCS", cluster.gcs_listens, time.monotonic() + 180)
        cluster.start_ray(WORKER)
        cluster.wait_for_services()
        cluster.wait_for_head()
        wait_for_nodes(cluster, 2)
        print(f"hosts up in {time.monotonic() - began:.1f}s", flush=True)
        yield cluster
    finally:
        cluster.close()


def upload_source(cluster: Hosts) -> None:
    local = cluster.root / "client" / "source"
    make_demo_data(local, per_class=40)
    store = s3(cluster)
    # `weed mini -bucket` creates it once its filer is up, maybe after S3 answers.
    wait_for(
        f"bucket {BUCKET}",
        lambda: store.get_file_info(BUCKET).type == pafs.FileType.Directory,
        time.monotonic() + 60,
    )
    pafs.copy_files(str(local), f"{BUCKET}/source", destination_filesystem=store)


def alive_nodes(cluster: Hosts) -> set[str]:
    """The IP addresses of the nodes the head counts alive (its state API)."""
    request = urllib.request.Request(
        f"{cluster.jobs_api}/api/v0/nodes?limit=100",
        headers={"Authorization": f"Bearer {cluster.token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.load(response)["data"]["result"]["result"]
    except OSError:
        return set()
    return {node["node_ip"] for node in nodes if node["state"] == "ALIVE"}


def wait_for_nodes(cluster: Hosts, count: int) -> None:
    wait_for(
        f"{count} Ray nodes",
        lambda: len(alive_nodes(cluster)) == count,
        time.monotonic() + 180,
        cluster.folder(WORKER) / "ray.log",
    )


def s3(cluster: Hosts) -> pafs.S3FileSystem:
    """The object store as the test (a user's machine with the keys) sees it."""
    return pafs.S3FileSystem(
        access_key=cluster.access_key,
        secret_key=cluster.secret_key,
        endpoint_override=cluster.s3_endpoint,
        region="us-east-1",
    )


def submit(cluster: Hosts, log: Path) -> subprocess.Popen:
    """The README's command from this machine: no S3 key, no token in the job."""
    command = [str(BIN / "vggpipe"), "submit", "run", "--address", cluster.jobs_api, "--"]
    command += ["--recipe", "smoke", "--data", SOURCE, "--work-dir", WORK]
    for setting in WORKFLOW_SETTINGS:
        command += ["--set", setting]
    env = {k: v for k, v in cluster.cluster_env().items() if not k.startswith("AWS_")} | {
        "MLFLOW_TRACKING_URI": cluster.mlflow_uri,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": cluster.token,
    }
    with log.open("w") as output:
        job = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    cluster.processes.append(job)  # ended with the hosts, whatever happens
    return job


def finish(job: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        job.wait(timeout=JOB_SECONDS)
    except subprocess.TimeoutExpired:
        job.kill()  # Ray's job stops with the hosts
        job.wait()
        pytest.fail("the job did not end in time:\n" + log.read_text()[-4000:])
    return job.returncode, log.read_text()


def train_worker_on(cluster: Hosts, host: str) -> bool:
    """Whether a Ray Train worker process runs on `host` now."""
    for pid in cluster.pids(host):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def kill_raylet(cluster: Hosts, host: str) -> None:
    for pid in cluster.pids(host):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def stage_runs(uri: str) -> dict[str, list]:
    runs = tracking.client(uri).search_runs(
        [tracking.experiment_id(EXPERIMENT, uri)], filter_string=f"tags.`{STAGE_KEY_TAG}` != ''"
    )
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(run.data.tags[STAGE_KEY_TAG], []).append(run)
    return by_key


@pytest.fixture(scope="module")
def walked(hosts):
    """Submit, lose the worker node while a net trains with a
    worker on it, bring a new worker node up, and submit the same command again."""
    began = time.monotonic()

    def phase(what: str) -> None:  # shown with -s or on failure: where the minutes go
        print(f"{time.monotonic() - began:6.1f}s {what}", flush=True)

    root = hosts.root / "client"
    first_log = root / "first.log"
    first = submit(hosts, first_log)
    lost = threading.Event()
    deadline = time.monotonic() + JOB_SECONDS
    while first.poll() is None and time.monotonic() < deadline:
        if train_worker_on(hosts, WORKER):
            kill_raylet(hosts, WORKER)
            phase("worker node's raylet killed")
            lost.set()
            break
        time.sleep(0.2)
    assert lost.is_set(), "no Ray Train worker ran on the worker node:\n" + first_log.read_text()
    # Once the head has marked it dead, a new machine takes its place at the same
    # address (as an autoscaler or KubeRay would): what is left of the old one
    # (its workers, agents and `ray start`) goes first.
    wait_for_nodes(hosts, 1)
    phase("head marked it dead")
    hosts.kill_host(WORKER)
    hosts.start_ray(WORKER)
    wait_for_nodes(hosts, 2)
    phase("a new worker node joined")
    first_result = finish(first, first_log)
    phase(f"first job ended ({first_result[0]})")
    second_log = root / "second.log"
    second_result = finish(submit(hosts, second_log), second_log)
    phase(f"second job ended ({second_result[0]})")
    config = workflow_recipe(
        "smoke", [f"data={SOURCE}", f"work_dir={WORK}", f"tracking_uri={hosts.mlflow_uri}"]
        + WORKFLOW_SETTINGS,
    )  # fmt: skip
    return {
        "first": first_result,
        "second": second_result,
        "config": config,
    }


def test_workflow_survives_a_lost_node_and_finishes_on_resubmission(hosts, walked):
    first_code, first_output = walked["first"]
    second_code, second_output = walked["second"]
    # The first job either got past the loss or its failed stage names the lost node.
    failures = [line for line in first_output.splitlines() if "FAILED" in line]
    assert first_code == 0 or any("10.203.0.3" in line for line in failures), first_output[-4000:]
    assert second_code == 0, second_output[-4000:]
    stages = plan(walked["config"])
    if first_code == 0:  # the second run had nothing left to do
        assert f"0 stage(s) run, {len(stages)} reused" in second_output, second_output[-4000:]
    assert "reused   preprocess" in second_output
    uri = hosts.mlflow_uri
    runs = stage_runs(uri)
    assert set(runs) == {stage.key for stage in stages}
    for stage in stages:
        [run] = runs[stage.key]  # continued after the loss, never duplicated
        assert run.info.status == "FINISHED", stage.key
        assert run.data.tags[DONE_TAG] == run.data.tags[FINGERPRINT_TAG] == stage.fingerprint
    name = workflow_name(walked["config"])
    client = tracking.client(uri)
    everything = client.search_runs([tracking.experiment_id(EXPERIMENT, uri)])
    assert [run.info.run_name for run in everything].count(name) == 1  # one parent
    parent = tracking.find_run(name, EXPERIMENT, uri)
    assert parent is not None and parent.info.status == "FINISHED"
    children = tracking.child_runs(parent.info.run_id, uri)
    assert {run.data.tags[STAGE_KEY_TAG] for run in children} == set(runs)
    assert not [run.info.run_name for run in everything if run.info.status == "RUNNING"]
    # Every net trained on both nodes.
    for key, [run] in runs.items():
        if key.startswith("train/"):
            assert run.data.metrics["nodes"] == 2, key


def test_everything_lives_in_the_object_store(hosts, walked):
    store = s3(hosts)
    listed = store.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
    names = [info.path for info in listed if info.type == pafs.FileType.File]
    assert any(name.startswith(f"{BUCKET}/mlflow/") and name.endswith("MLmodel") for name in names)
    assert any(name.startswith(f"{BUCKET}/work/checkpoints/") for name in names)
    with store.open_input_stream(f"{BUCKET}/work/tables.md") as tables:
        assert "| A-36 + B-36 " in tables.read().decode()
    shard_folders = sorted(
        {name.split("/")[2] for name in names if name.startswith(f"{BUCKET}/work/shards-")}
    )
    assert shard_folders
    for folder in shard_folders:
        verified = subprocess.run(
            [str(BIN / "vggpipe"), "verify", f"{WORK}/{folder}"],
            env=hosts.cluster_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # No host kept anything of the run in its own folder.
    for host in (HEAD, WORKER, SERVICES):
        assert not list(hosts.folder(host).rglob("*.safetensors")), host
