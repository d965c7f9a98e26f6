"""Three hosts on this machine, each a Linux network namespace of its own on a
private bridge: a Ray head (token authentication on), a Ray worker node, and a
services host with an S3 object store (SeaweedFS) and `mlflow server` keeping
its artifacts there. The test process, in the machine's own namespace, reaches
them through the bridge as a user's laptop reaches a cluster.

Nothing is shared through the local filesystem on purpose: each host has its
own working folder, HOME and temp folder; the data, the shards, the checkpoints
and MLflow's artifacts live in the object store. Every process a host runs
stays in its namespace, so `ip netns pids` finds all of them (Ray's workers and
job drivers included) when the hosts are taken down.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A private /24 for the test alone: the bridge is .1 (the test's side), the hosts
# .2 to .4. Every address the test or its hosts reach is in it or on loopback.
SUBNET = "10.203.0"
HEAD, WORKER, SERVICES = "head", "worker", "services"
ADDRESSES = {HEAD: f"{SUBNET}.2", WORKER: f"{SUBNET}.3", SERVICES: f"{SUBNET}.4"}
S3_PORT, MLFLOW_PORT, GCS_PORT, DASHBOARD_PORT = 8333, 5000, 6379, 8265
BUCKET = "vggpipe"
START_SECONDS = 180
# Ray, MLflow and SeaweedFS report usage to their makers unless told not to.
NO_PHONING_HOME = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
DROPPED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces (a container without
    CAP_NET_ADMIN, no `ip`), or None when it can: asked by making one."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (make test-cluster installs it)"
    probe = f"vgc-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def wait_for(what: str, ready, deadline: float, log: Path | None = None) -> None:
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what} did not come up in time\n{tail}")
        time.sleep(0.5)


def answers(url: str, headers: dict[str, str] | None = None, refusal_ok: bool = False) -> bool:
    """Whether `url` answers; a refusal (401, 403) counts only with `refusal_ok`."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500 and (refusal_ok or error.code not in (401, 403))
    except OSError:
        return False


@dataclass
class Hosts:
    """The bridge, the namespaces and what runs in them; `close()` ends it all."""

    root: Path  # short: Ray's Unix socket paths must fit in 107 bytes
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    access_key: str = field(default_factory=lambda: "vgp" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    namespaces: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"vgpbr{self.tag}"  # interface names: 15 characters at most

    @property
    def s3_endpoint(self) -> str:
        return f"http://{ADDRESSES[SERVICES]}:{S3_PORT}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{ADDRESSES[SERVICES]}:{MLFLOW_PORT}"

    @property
    def jobs_api(self) -> str:
        return f"http://{ADDRESSES[HEAD]}:{DASHBOARD_PORT}"

    def folder(self, host: str) -> Path:
        path = self.root / host[0]
        path.mkdir(exist_ok=True)
        return path

    # -- the network ---------------------------------------------------------

    def build_network(self) -> None:
        taken = subprocess.run(
            ["ip", "-o", "addr", "show", "to", f"{SUBNET}.0/24"], capture_output=True, text=True
        ).stdout
        # A run killed before its clean-up (SIGKILL) leaves its bridge: one more
        # with the same subnet would split the routes between them.
        assert not taken, f"{SUBNET}.0/24 is in use here (a killed run's bridge?):\n{taken}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, host in enumerate((HEAD, WORKER, SERVICES)):
            namespace = f"vgp{self.tag}-{host}"
            _ip("netns", "add", namespace)
            self.namespaces[host] = namespace
            outside = f"vgp{self.tag}v{index}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{ADDRESSES[host]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def link(self, host: str, up: bool) -> None:
        _ip("-n", self.namespaces[host], "link", "set", "eth0", "up" if up else "down")

    # -- processes -----------------------------------------------------------

    def cluster_env(self) -> dict[str, str]:
        """What the README tells users to give every Ray node (and the MLflow
        server): the S3 keys and endpoint in the environment, never in a job."""
        env = {k: v for k, v in os.environ.items() if k not in DROPPED}
        env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env |= NO_PHONING_HOME | {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,  # pyarrow's S3 and boto3 both read it
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no credential lookups at 169.254.169.254
            # Gloo (CPU training) gives its peers the address of the host name,
            # which is 127.0.0.1 for every host here, as on machines whose
            # /etc/hosts maps it to loopback: the README tells users the same.
            "GLOO_SOCKET_IFNAME": "eth0",
        }
        return env

    def start(self, host: str, name: str, command: list[str], env: dict[str, str]):
        """`command` in `host`'s namespace, working in its own folder."""
        folder = self.folder(host)
        with (folder / f"{name}.log").open("a") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[host], *command],
                cwd=folder,
                env=env | {"HOME": str(folder)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_object_store(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "vggpipe",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.folder(SERVICES) / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        command = [str(BIN / "weed"), "mini", f"-dir={self.folder(SERVICES) / 'weed'}"]
        command += [f"-ip={ADDRESSES[SERVICES]}", f"-s3.config={config}", f"-bucket={BUCKET}"]
        command += ["-master.telemetry=false", "-admin.ui=false", "-webdav=false"]
        command += ["-s3.port.iceberg=0", "-s3.port.lance=0"]
        (self.folder(SERVICES) / "weed").mkdir(exist_ok=True)
        self.start(SERVICES, "weed", command, self.cluster_env())

    def start_mlflow(self) -> None:
        folder = self.folder(SERVICES)
        command = [str(BIN / "mlflow"), "server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT)]
        command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", f"s3://{BUCKET}/mlflow", "--workers", "1"]
        command += ["--allowed-hosts", f"{ADDRESSES[SERVICES]}:{MLFLOW_PORT}"]
        # boto3 in the server writes the artifacts; MLflow's own endpoint setting.
        env = self.cluster_env() | {"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint}
        self.start(SERVICES, "mlflow", command, env)

    def start_ray(self, host: str) -> subprocess.Popen:
        """`ray start` on `host` with its own temp folder (a new one each time:
        a replaced node is a new node)."""
        temp = Path(tempfile.mkdtemp(prefix="t", dir=self.folder(host)))
        command = [str(BIN / "ray"), "start", f"--node-ip-address={ADDRESSES[host]}"]
        command += ["--num-cpus=2", "--object-store-memory=150000000", "--disable-usage-stats"]
        command += [f"--temp-dir={temp}", "--block"]
        if host == HEAD:
            command += ["--head", f"--port={GCS_PORT}", "--dashboard-host=0.0.0.0"]
            command += [f"--dashboard-port={DASHBOARD_PORT}"]
        else:
            command += [f"--address={ADDRESSES[HEAD]}:{GCS_PORT}"]
        env = self.cluster_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        return self.start(host, "ray", command, env)

    def gcs_listens(self) -> bool:
        try:
            socket.create_connection((ADDRESSES[HEAD], GCS_PORT), timeout=2).close()
        except OSError:
            return False
        return True

    def wait_for_object_store(self) -> None:
        wait_for(
            "SeaweedFS's S3",
            lambda: answers(self.s3_endpoint, refusal_ok=True),
            time.monotonic() + START_SECONDS,
            self.folder(SERVICES) / "weed.log",
        )

    def wait_for_services(self) -> None:
        self.wait_for_object_store()
        deadline = time.monotonic() + START_SECONDS
        services = self.folder(SERVICES)
        wait_for(
            "mlflow server",
            lambda: answers(f"{self.mlflow_uri}/health"),
            deadline,
            services / "mlflow.log",
        )

    def wait_for_head(self) -> None:
        wait_for(
            "the Ray head's Jobs API",
            lambda: answers(
                f"{self.jobs_api}/api/jobs/", {"Authorization": f"Bearer {self.token}"}
            ),
            time.monotonic() + START_SECONDS,
            self.folder(HEAD) / "ray.log",
        )

    def pids(self, host: str) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespaces[host]], capture_output=True, text=True
        )
        return [int(pid) for pid in listed.stdout.split()]

    def kill_host(self, host: str) -> None:
        """SIGKILL every process in `host`'s namespace (a machine that is gone)."""
        for _ in range(5):  # a raylet may start a worker while the others die
            pids = self.pids(host)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def close(self) -> None:
        for host in self.namespaces:
            self.kill_host(host)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for namespace in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        # Deleting a namespace deletes its veth ends, and with them their peers.
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
