"""`vggpipe submit` against a real Ray head started for this module with `ray
start --head` (dashboard and Jobs API on; tests/ray_head.py), through the
installed `vggpipe`: a job that succeeds, one that fails, an address where
nothing listens, a client without the head's token, an unknown stage; and how
the arguments are split."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from pipeline import submit as submit_module
from tests.commands import vggpipe
from tests.ray_head import TOKEN, clean_env, free_ports

REPO = Path(__file__).resolve().parents[2]


def _vggpipe(
    *args: str, timeout: float = 300, token: str | None = TOKEN
) -> subprocess.CompletedProcess:
    """The installed command as a client of the module's head (its token by default)."""
    return vggpipe(*args, timeout=timeout, env=clean_env(token))


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
    (port,) = free_ports(1)  # closed again: nothing listens there
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
