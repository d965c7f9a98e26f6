"""`vggpipe` answers what needs no stage (--help, a stage's --help, a config
error, --print-config) without loading torch, Ray or MLflow: the seconds those
imports take are what made every command slow to start. Asserted on what gets
imported, not on a time (benchmarks/startup.py measures the times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.commands import user_env

HEAVY = ("torch", "ray", "mlflow")

# Each a list of arguments, and the exit code it must give.
COMMANDS = [
    (["--help"], 0),
    (["preprocess", "a", "b", "--print-config"], 0),
    *(([stage, "--help"], 0) for stage in ("run", "demo", "train", "evaluate", "tune", "submit")),
    (["train", "--recipe", "smoke", "--set", "lr=-1"], 2),
    (["train", "--recipe", "smoke", "--print-config"], 0),
    (["tune", "--recipe", "tune-smoke", "--print-config", "json"], 0),
    (["run", "--recipe", "smoke", "--data", "d", "--print-config"], 0),
    (["evaluate", "a-run", "--grid", "1"], 2),
]

SCRIPT = """
import contextlib, io, json, sys
from pipeline.cli import main

codes = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exit:
            codes.append(exit.code)
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_config_errors_and_print_config_load_no_torch_ray_or_mlflow():
    argvs = [argv for argv, _ in COMMANDS]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env=user_env(),
        cwd=Path(__file__).parents[2],  # this checkout's `pipeline`
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["codes"] == [code for _, code in COMMANDS]
    assert report["heavy"] == []
