"""`vggpipe submit` against a real Ray head started for this module with `ray
start --head` (dashboard and Jobs API on), through the installed `vggpipe`: a job
that succeeds, one that fails, an address where nothing listens, a client without
the head's token, an unknown stage; and how the arguments are split.

The head must not touch the session's own Ray instance (conftest's `ray_local`,
started in the pytest process) nor any other Ray on this machine, so it is not
stopped with `ray stop`: that kills every process on the machine named like a
Ray process (ray/scripts/scripts.py, `stop`), other people's too. See
`_kill_session`."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline import submit as submit_module

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VGGPIPE = [shutil.which("vggpipe", path=str(BIN))]
HEAD_START_SECONDS = 120
ADDRESS_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Ray 2.60 heads demand a token when ~/.ray/auth_token exists, and a client
# sends one only with RAY_AUTH_MODE=token (which `ray_local` sets in this
# process's environment): the head and the clients get their own, explicitly.
TOKEN = secrets.token_hex(16)


def _free_ports(count: int) -> list[int]:
    # All bound at once, so the ports differ from each other.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _clean_env(token: str | None = TOKEN) -> dict[str, str]:
    dropped = (*ADDRESS_VARIABLES, *AUTH_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    # The job's `python` is whatever PATH finds first on the head.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def _vggpipe(
    *args: str, timeout: float = 300, token: str | None = TOKEN
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VGGPIPE, *args], capture_output=True, text=True, timeout=timeout, env=_clean_env(token)
    )


def _jobs_api_answers(url: str) -> bool:
    request = urllib.request.Request(
        f"{url}/api/jobs/", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        # A refused token will not be accepted later: fail now, not at the deadline.
        assert error.code not in (401, 403), f"{url} refused the test's token: {error}"
        return False
    except OSError:
        return False


def _kill_session(session_id: int, spare: int) -> None:
    """Kill every process of session `session_id` and their descendants.

    `ray start` runs in a session of its own, and the daemons it leaves behind
    (GCS, raylet, dashboard, agents, client server, log monitor) and the workers
    they spawn stay in it; only job drivers (Ray's job supervisor gives them a
    session of their own) leave it, and they are children of a worker in it.
    Nothing outside this head is in that session or descends from it, unlike
    the processes `ray stop` picks by name. `spare` is the unreaped `ray start`
    itself, left for the caller to reap.
    """
    for _ in range(5):  # a raylet may spawn a worker while the others die
        found: set[psutil.Process] = set()
        for proc in psutil.process_iter():
            try:
                if proc.pid != spare and os.getsid(proc.pid) == session_id:
                    found.add(proc)
            except OSError:  # gone, or not ours to inspect
                continue
        for proc in list(found):
            try:
                found.update(proc.children(recursive=True))
            except psutil.Error:
                continue
        if not found:
            return
        for proc in found:
            try:
                proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(found, timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """The Jobs API URL of a one-CPU Ray head that this module owns alone."""
    # Short and private: Ray's Unix sockets live under it (108-byte path limit),
    # and with it `ray start` writes its address file here, not in /tmp/ray,
    # so a bare ray.init() elsewhere on this machine never joins this head.
    temp_dir = tempfile.mkdtemp(prefix="vgp-")
    gcs, dashboard, client, node, objects, agent, agent_grpc, env_agent, metrics = _free_ports(9)
    url = f"http://127.0.0.1:{dashboard}"
    with open(Path(temp_dir) / "ray-start.log", "w") as log:
        starter = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={client}",
                f"--node-manager-port={node}",
                f"--object-manager-port={objects}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={env_agent}",
                f"--metrics-export-port={metrics}",
                "--num-cpus=1",
                "--object-store-memory=200000000",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            # Its pid becomes the id of the session every head process stays in.
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        # WNOWAIT: learn that `ray start` ended without reaping it, so its pid,
        # the session id _kill_session looks for, cannot be reused before then.
        while (
            ended := os.waitid(os.P_PID, starter.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        ) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        started_log = (Path(temp_dir) / "ray-start.log").read_text()
        assert ended is not None and ended.si_status == 0, started_log[-3000:]
        while not _jobs_api_answers(url):
            assert time.monotonic() < deadline, f"no Jobs API at {url}\n{started_log[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        _kill_session(starter.pid, spare=starter.pid)
        if starter.poll() is None:
            starter.kill()
        starter.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory) -> str:
    from pipeline.demo_data import make_demo_data

    source = tmp_path_factory.mktemp("submit") / "source"
    make_demo_data(source, per_class=20)
    return str(source)


@pytest.mark.slow
def test_submitted_preprocess_job_succeeds_and_its_logs_are_followed(
    ray_head, demo_source, tmp_path
):
    output = str(tmp_path / "shards")

    done = _vggpipe(
        *("submit", "preprocess", "--address", ray_head, "--working-dir", str(REPO), "--"),
        *(demo_source, output, "--max-short-side", "64", "--shard-rows", "400", "--no-progress"),
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Prepared {output} from " in done.stdout  # the job's own summary, followed
    assert "succeeded" in done.stderr
    manifest = json.loads((Path(output) / "manifest.json").read_text())
    assert sum(split["rows"] for split in manifest["splits"].values()) == 200


@pytest.mark.slow
def test_failing_job_exits_1_and_says_why(ray_head, tmp_path):
    done = _vggpipe(
        *("submit", "preprocess", "--address", ray_head, "--working-dir", str(REPO)),
        *("--", "/no/such/source", str(tmp_path / "out"), "--no-progress"),
    )

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "vggpipe preprocess: error:" in done.stdout  # the job's log
    failure = [line for line in done.stderr.splitlines() if " failed: " in line]
    assert failure and "exit code 2" in failure[0], done.stderr


def test_address_without_jobs_api_exits_2_in_one_line(tmp_path):
    (port,) = _free_ports(1)  # closed again: nothing listens there
    address = f"http://127.0.0.1:{port}"

    done = _vggpipe("submit", "preprocess", "--address", address, "--", "a", "b", timeout=120)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vggpipe submit:")]
    assert len(errors) == 1 and address in errors[0], done.stderr


@pytest.mark.slow
def test_client_without_the_clusters_token_exits_2_in_one_line(ray_head):
    done = _vggpipe("submit", "preprocess", "--address", ray_head, "--", "a", "b", token=None)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vggpipe submit:")]
    assert len(errors) == 1 and "RAY_AUTH_MODE=token" in errors[0], done.stderr


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vggpipe")
    submit_module.register(parser.add_subparsers(dest="command"))
    return parser


def test_stage_outside_jobs_is_rejected(capsys):
    args = _parser().parse_args(["submit", "nosuchstage", "x"])

    with pytest.raises(SystemExit) as exited:
        args.func(args)

    assert exited.value.code == 2
    assert "invalid choice: 'nosuchstage'" in capsys.readouterr().err
    jobs = {path.stem for path in (REPO / "jobs").glob("*.py")} - {"__init__"}
    assert set(submit_module.stages()) == jobs


@pytest.mark.parametrize(
    ("argv", "address", "stage_args"),
    [
        (["train", "--address", "A", "--", "--recipe", "demo"], "A", ["--recipe", "demo"]),
        (
            ["train", "--recipe", "demo", "--address", "B"],
            None,
            ["--recipe", "demo", "--address", "B"],
        ),
        (["--address", "A", "train", "--", "--address", "B"], "A", ["--address", "B"]),
        (["train", "--address=A", "--", "--", "x"], "A", ["--", "x"]),
    ],
)
def test_options_after_stage_are_submits_until_a_stage_argument_or_dashes(
    monkeypatch, argv, address, stage_args
):
    calls = []

    def fake_submit(stage, args, **options):
        calls.append((stage, args, options))
        return submit_module.JobOutcome("id", "address", "SUCCEEDED")

    monkeypatch.setattr(submit_module, "submit", fake_submit)
    args = _parser().parse_args(["submit", *argv])

    assert args.func(args) == 0
    [(stage, passed, options)] = calls
    assert (stage, passed, options["address"]) == ("train", stage_args, address)


def test_job_env_forwards_the_tracking_uri_and_entrypoint_quotes(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")

    assert submit_module.job_env({"A": "1"})["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert submit_module.job_env({"MLFLOW_TRACKING_URI": "x"})["MLFLOW_TRACKING_URI"] == "x"
    assert submit_module.entrypoint("train", ["--set", "a b"]) == "python -m jobs.train --set 'a b'"
