"""`mlflow server` on loopback for the tests that need a real tracking server:
started, waited for, killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """`mlflow server --backend-store-uri STORE *options` on 127.0.0.1, its
    output in `log_path`. Starts at once; `wait_ready` gives its URL when it
    answers, so a caller can do other work while it boots."""

    def __init__(self, backend_store_uri: str, log_path: Path, *options: str):
        self.log_path = log_path
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        # The server's job runner (GenAI judges and scorers: six more Python
        # processes importing MLflow, half a minute on two busy cores) is no
        # part of tracking runs or browsing them.
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port)]
                + ["--backend-store-uri", backend_store_uri, "--workers", "1", *options],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self.url
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not come up:\n" + self.log_path.read_text())
                time.sleep(0.2)

    def stop(self) -> None:
        # Killed: the store is SQLite and each request its own transaction, so
        # nothing is lost, and its graceful stop takes seconds.
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
