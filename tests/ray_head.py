"""A real Ray head with the dashboard and the Jobs API, for tests that submit
jobs (`from tests.ray_head import ray_head` makes the module-scoped fixture
available to a test module).

The head must not touch the session's own Ray instance (conftest's `ray_local`,
started in the pytest process) nor any other Ray on this machine, so it is not
stopped with `ray stop`: that kills every process on the machine named like a
Ray process (ray/scripts/scripts.py, `stop`), other people's too. See
`kill_session`."""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_START_SECONDS = 120
ADDRESS_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Ray 2.60 heads demand a token when ~/.ray/auth_token exists, and a client
# sends one only with RAY_AUTH_MODE=token (which `ray_local` sets in this
# process's environment): the head and the clients get their own, explicitly.
TOKEN = secrets.token_hex(16)


def free_ports(count: int) -> list[int]:
    # All bound at once, so the ports differ from each other.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def clean_env(token: str | None = TOKEN) -> dict[str, str]:
    dropped = (*ADDRESS_VARIABLES, *AUTH_VARIABLES)
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    # The job's `python` is whatever PATH finds first on the head.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def jobs_api_answers(url: str) -> bool:
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


def kill_session(session_id: int, spare: int) -> None:
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


@pytest.fixture(scope="session")
def ray_head():
    """The Jobs API URL of a one-CPU Ray head of this test session's own, shared
    by the tests that submit jobs (each job is its own; starting a head costs
    seconds the suite's budget does not have twice)."""
    # Short and private: Ray's Unix sockets live under it (108-byte path limit),
    # and with it `ray start` writes its address file here, not in /tmp/ray,
    # so a bare ray.init() elsewhere on this machine never joins this head.
    temp_dir = tempfile.mkdtemp(prefix="vgp-")
    gcs, dashboard, client, node, objects, agent, agent_grpc, env_agent, metrics = free_ports(9)
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
            env=clean_env(),
            # Its pid becomes the id of the session every head process stays in.
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        # WNOWAIT: learn that `ray start` ended without reaping it, so its pid,
        # the session id kill_session looks for, cannot be reused before then.
        while (
            ended := os.waitid(os.P_PID, starter.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        ) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        started_log = (Path(temp_dir) / "ray-start.log").read_text()
        assert ended is not None and ended.si_status == 0, started_log[-3000:]
        while not jobs_api_answers(url):
            assert time.monotonic() < deadline, f"no Jobs API at {url}\n{started_log[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        kill_session(starter.pid, spare=starter.pid)
        if starter.poll() is None:
            starter.kill()
        starter.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
