"""`import pipeline` turns MLflow's usage telemetry off unless the user chose:
offline, its settings thread deletes an environment variable while another
thread's request iterates os.environ, and an MLflow call fails with KeyError
(seen in this project's test run). In a fresh interpreter, because the test
session itself already sets it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, pipeline, mlflow.telemetry.utils as t;"
    "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'), t.is_telemetry_disabled())"
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "true True"), ("false", "false")],
    ids=["unset-turned-off", "users-choice-kept"],
)
def test_import_pipeline_turns_mlflow_telemetry_off_unless_set(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    if given is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = given
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2].startswith(expected), done.stdout
