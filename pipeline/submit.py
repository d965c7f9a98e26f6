"""`vggpipe submit STAGE [ARGS...]`: run a pipeline stage as a Ray job through
Ray's Jobs API, follow its logs, and exit with its outcome.

It does what `ray job submit --working-dir . -- python -m jobs.STAGE ARGS` does,
plus what that leaves to the user: MLFLOW_TRACKING_URI goes with the job, the
job's Python output is unbuffered so its logs arrive as they are written, a
mistyped stage or a credential in the job's metadata is refused before anything
is sent, and Ctrl-C stops the job instead of leaving it running on the cluster.

Python API: `submit(stage, args, ...)` returns a `JobOutcome` (submission id,
final status, Ray's message and the exit code `vggpipe submit` exits with).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pkgutil
import re
import secrets
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pipeline.errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray reads these itself and lets them override the address it is given
# (ray.dashboard.utils.get_address_for_submission_client); `--address` must win.
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# The job has to log to the MLflow server the submitter uses: without it, the
# job would write ./mlflow.db inside its unpacked working directory on the
# cluster, which nobody reads and Ray deletes.
FORWARDED_VARIABLES = ("MLFLOW_TRACKING_URI",)
POLL_SECONDS = 0.5

# A job's runtime_env and entrypoint are readable by every Jobs API client (`ray job
# list`): no credential may go there. A URI's userinfo ends at the first / ? #.
URI_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s:@]*:[^/?#\s@]+@")
REFUSED = (
    "{} and every Jobs API client can read the job's metadata: set it on the cluster instead "
    "(env from a Kubernetes Secret on the Ray pods, or the nodes' environment; see the README)"
)

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class JobOutcome:
    """What became of a submitted job.

    `status` is Ray's JobStatus value when `submit` returned: SUCCEEDED, FAILED
    or STOPPED after waiting; PENDING or RUNNING with wait=False or after Ctrl-C.
    `exit_code`: 0 succeeded (or not waited for), 1 failed or stopped, 130
    interrupted here (the job was asked to stop).
    """

    submission_id: str
    address: str
    status: str
    message: str = ""
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_CODES.get(self.status, 0)


def stages() -> list[str]:
    """The modules of the `jobs` package: each is a stage `python -m jobs.STAGE` runs.
    Read from the package's folder so a new job file needs no change here."""
    import jobs

    return sorted(
        module.name
        for module in pkgutil.iter_modules(jobs.__path__)
        if not module.ispkg and not module.name.startswith("_")
    )


def entrypoint(stage: str, args: Sequence[str]) -> str:
    """The shell command the job runs; shlex.join keeps every argument one word."""
    return shlex.join(["python", "-m", f"jobs.{stage}", *args])


def resolve_address(address: str | None = None) -> str:
    """`address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local dashboard."""
    if address:
        return address
    for variable in ADDRESS_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return DEFAULT_ADDRESS


def job_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """runtime_env env_vars: the forwarded variables set here, then `env` over them."""
    # Without it Python block-buffers the driver's stdout (a file, not a
    # terminal), and a followed job would print nothing until it ends.
    variables = {"PYTHONUNBUFFERED": "1"}
    variables.update({k: os.environ[k] for k in FORWARDED_VARIABLES if os.environ.get(k)})
    variables.update(env or {})
    return variables


def secret_name(name: str) -> bool:
    """Whether the name says a secret: MLFLOW_TRACKING_PASSWORD, AWS_SESSION_TOKEN, HF_TOKEN,
    OPENAI_API_KEY; not TOKENIZERS_PARALLELISM, AWS_ACCESS_KEY_ID, *_PATH, *_FILE (where one is)."""
    words = name.upper().split("_")
    if words[-1] in ("PATH", "FILE"):
        return False
    glued = any(word in name.upper() for word in ("PASSWORD", "PASSWD", "SECRET"))
    return glued or "TOKEN" in words or words[-1] in ("KEY", "APIKEY")


def has_uri_password(text: str) -> bool:
    return URI_PASSWORD.search(text) is not None


def check_no_credentials(env: Mapping[str, str], working_dir: str, args: Sequence[str]) -> None:
    """UserError naming, never repeating, the first credential in the job's env_vars
    (`env` and the forwarded variables), its working_dir or its arguments."""
    places = [
        (name if name in env else f"{name} (forwarded from this environment)", name, value)
        for name, value in job_env(env).items()
    ]
    places += [("--working-dir", "", working_dir)]
    places += [(f"stage argument {i + 1}", "", word) for i, word in enumerate(args)]
    for place, name, value in places:
        if secret_name(name):
            raise UserError(REFUSED.format(f"{place} names a secret,"))
        if has_uri_password(value):
            raise UserError(REFUSED.format(f"{place} holds a URI with a password,"))


def connect(address: str | None = None) -> JobSubmissionClient:
    """A client of the Jobs API at `address` (see resolve_address); UserError when
    nothing answers there."""
    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address)
    with _without_env(ADDRESS_VARIABLES):
        try:
            return JobSubmissionClient(resolved)
        except AuthenticationError as exc:
            raise UserError(
                f"the Ray cluster at {resolved} refused this client: {_first_line(exc.message)} "
                "(it uses token authentication: set RAY_AUTH_MODE=token here, with the "
                "cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from exc
        except ConnectionError as exc:
            raise UserError(
                f"no Ray Jobs API answers at {resolved} (start a head with "
                "`ray start --head`, or pass --address)"
            ) from exc
        # A host:port (GCS) address makes Ray look the dashboard up in the GCS,
        # which fails with RayError subclasses (RpcError) rather than OSError.
        except (OSError, RuntimeError, ValueError, RayError) as exc:
            raise UserError(f"cannot use the Ray Jobs API at {resolved}: {_one_line(exc)}") from exc


def submit(
    stage: str,
    args: Sequence[str] = (),
    *,
    address: str | None = None,
    working_dir: str = ".",
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    submission_id: str | None = None,
    out: TextIO | None = None,
) -> JobOutcome:
    """Submit `python -m jobs.STAGE ARGS` as a Ray job with `working_dir` uploaded.

    With `wait`, the job's logs go to `out` (stdout) as they arrive and this
    returns once the job has ended; Ctrl-C asks Ray to stop the job and returns
    an interrupted outcome. Raises UserError for an unknown stage, a working
    directory without the stage's job file, a credential (check_no_credentials),
    or an address with no Jobs API.
    """
    out = out if out is not None else sys.stdout
    known = stages()
    if stage not in known:
        raise UserError(f"unknown stage {stage!r} (choose from {', '.join(known)})")
    check_no_credentials(env or {}, working_dir, args)
    _check_working_dir(working_dir, stage)
    resolved = resolve_address(address)
    client = connect(resolved)
    # Chosen here rather than by Ray so that Ctrl-C during the upload can still
    # stop the job, and so the id says which stage it runs.
    submission_id = submission_id or f"vggpipe-{stage}-{secrets.token_hex(4)}"
    try:
        client.submit_job(
            entrypoint=entrypoint(stage, args),
            submission_id=submission_id,
            runtime_env={"working_dir": working_dir, "env_vars": job_env(env)},
            metadata={"vggpipe.stage": stage},
        )
    except KeyboardInterrupt:
        return _interrupted(client, resolved, submission_id)
    except RuntimeError as exc:
        raise UserError(f"{resolved} refused the job: {_server_error(exc)}") from exc
    if not wait:
        print(submission_id, file=out, flush=True)
        return JobOutcome(submission_id, resolved, str(client.get_job_status(submission_id)))
    print(
        f"vggpipe submit: job {submission_id} submitted to {resolved}; following its logs "
        "(Ctrl-C stops the job)",
        file=sys.stderr,
        flush=True,
    )
    try:
        _follow_logs(client, submission_id, out)
        info = _wait_until_done(client, submission_id)
    except KeyboardInterrupt:
        return _interrupted(client, resolved, submission_id)
    except (OSError, RuntimeError) as exc:  # the head went away, or its dashboard
        raise UserError(
            f"lost {resolved} while following job {submission_id}: {_one_line(exc)}"
        ) from exc
    outcome = JobOutcome(submission_id, resolved, str(info.status), info.message or "")
    if outcome.status == "SUCCEEDED":
        print(f"vggpipe submit: job {submission_id} succeeded", file=sys.stderr)
    elif outcome.status == "STOPPED":
        print(f"vggpipe submit: job {submission_id} was stopped", file=sys.stderr)
    else:
        print(
            f"vggpipe submit: job {submission_id} failed: {_failure_line(outcome.message)}",
            file=sys.stderr,
        )
    return outcome


def register(subparsers: argparse._SubParsersAction) -> None:
    known = stages()
    parser = subparsers.add_parser(
        "submit",
        help="run a pipeline stage as a Ray job on a cluster (Ray's Jobs API)",
        usage="%(prog)s [options] STAGE [options] [--] [ARGS ...]",
        description="Run a pipeline stage as a Ray job and follow it: what "
        "`ray job submit --working-dir . -- python -m jobs.STAGE ARGS` does. The working "
        "directory (the project root, by default .) is uploaded, leaving out what .gitignore "
        "names; the job's logs are printed as they arrive, and the exit status is the job's: "
        "0 succeeded, 1 failed or stopped, 2 cannot submit, 130 interrupted (Ctrl-C stops the "
        "job). MLFLOW_TRACKING_URI, when set here, goes with the job, so it logs to the same "
        "MLflow server; set it to a server the cluster reaches. A head that uses token "
        "authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN) here. "
        f"STAGE is one of: {', '.join(known)}. ARGS are the stage's own arguments (see "
        "`vggpipe STAGE --help`), passed on verbatim: everything after `--`, else everything "
        "from the first word after STAGE that is not one of the options below.",
        epilog="example: vggpipe submit train --address http://head:8265 -- --recipe demo "
        "--data s3://bucket/shards",
    )
    own = _add_options(parser)
    # One REMAINDER positional rather than STAGE plus REMAINDER: argparse drops a
    # `--` that directly follows a single positional, and `--` must stay visible
    # to tell the stage's `--address` from submit's.
    parser.add_argument("stage_and_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        return _run(parser, own, known, args)

    parser.set_defaults(func=run)


def _add_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        parser.add_argument(
            "--address",
            help="Jobs API address, e.g. http://head:8265 (default: RAY_API_SERVER_ADDRESS, "
            f"else RAY_ADDRESS, else {DEFAULT_ADDRESS})",
        ),
        parser.add_argument(
            "--working-dir",
            default=".",
            help="folder uploaded as the job's working directory; must hold jobs/STAGE.py "
            "(default: %(default)s, run from the project root)",
        ),
        parser.add_argument(
            "--env",
            action="append",
            type=_env_pair,
            metavar="KEY=VALUE",
            help="environment variable for the job (repeatable); overrides a forwarded "
            "MLFLOW_TRACKING_URI; no secrets (they are refused: set them on the cluster)",
        ),
        parser.add_argument(
            "--submission-id", help="the job's id (default: vggpipe-STAGE-<random>)"
        ),
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="print the job's id and return at once instead of following it",
        ),
    ]


def _run(
    parser: argparse.ArgumentParser,
    own: list[argparse.Action],
    known: list[str],
    args: argparse.Namespace,
) -> int:
    words = list(args.stage_and_args)
    if words[:1] == ["--"]:  # `vggpipe submit [options] -- STAGE ARGS`
        words = words[1:]
    if not words:
        parser.error("the following arguments are required: STAGE")
    stage, words = words[0], words[1:]
    if stage not in known:
        choices = ", ".join(repr(name) for name in known)
        parser.error(f"argument STAGE: invalid choice: {stage!r} (choose from {choices})")
    options, stage_args = _split_options(words, own)
    if "-h" in options or "--help" in options:
        parser.print_help()
        return 0
    if options:
        # Same option definitions, parsed into the same namespace: argparse only
        # fills defaults for attributes not already there, so options given
        # before STAGE survive unless repeated here.
        again = argparse.ArgumentParser(prog=parser.prog, usage=parser.usage, add_help=False)
        _add_options(again)
        again.parse_args(options, namespace=args)
    outcome = submit(
        stage,
        stage_args,
        address=args.address,
        working_dir=args.working_dir,
        env=dict(args.env or []),
        wait=not args.no_wait,
        submission_id=args.submission_id,
    )
    return outcome.exit_code


def _split_options(words: list[str], own: list[argparse.Action]) -> tuple[list[str], list[str]]:
    """Submit's own options at the front of `words`, and the stage's arguments:
    everything after `--`, else from the first word that is not submit's."""
    takes_value = {name: action.nargs != 0 for action in own for name in action.option_strings}
    takes_value.update({"-h": False, "--help": False})
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return words[:index], words[index + 1 :]
        name = word.split("=", 1)[0] if word.startswith("--") else word
        if name not in takes_value:
            break
        index += 2 if takes_value[name] and "=" not in word else 1
    return words[:index], words[index:]


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _check_working_dir(working_dir: str, stage: str) -> None:
    if "://" in working_dir:  # a remote package (s3://, https://...zip): Ray fetches it
        return
    folder = Path(working_dir)
    if not folder.is_dir():
        raise UserError(f"working directory {working_dir} is not a folder")
    if not (folder / "jobs" / f"{stage}.py").is_file():
        raise UserError(
            f"working directory {working_dir} has no jobs/{stage}.py: run from the project "
            "root or pass --working-dir"
        )


def _follow_logs(client: JobSubmissionClient, submission_id: str, out: TextIO) -> None:
    async def follow() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(follow())
    except RuntimeError as exc:
        # The log stream broke (dashboard restarted, network): the job may still
        # run, so its status, polled next, decides the outcome.
        print(
            f"vggpipe submit: stopped following the logs of job {submission_id}: {_one_line(exc)}",
            file=sys.stderr,
        )


def _wait_until_done(client: JobSubmissionClient, submission_id: str):
    # The log stream ends when the driver exits, a moment before the job's
    # status turns terminal.
    while True:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal():
            return info
        time.sleep(POLL_SECONDS)


def _interrupted(client: JobSubmissionClient, address: str, submission_id: str) -> JobOutcome:
    try:
        client.stop_job(submission_id)
        status = str(client.get_job_status(submission_id))
    except RuntimeError:  # interrupted before Ray registered the job: nothing to stop
        status = "STOPPED"
    print(f"vggpipe submit: interrupted; asked Ray to stop job {submission_id}", file=sys.stderr)
    return JobOutcome(submission_id, address, status, interrupted=True)


def _failure_line(message: str) -> str:
    # Ray appends the driver's last logs to the message; they were just printed.
    return _first_line(message).split(", last available logs")[0].rstrip(":")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return lines[0] if lines else "no message from Ray"


def _server_error(exc: BaseException) -> str:
    # The Jobs API answers a bad request with the server's whole traceback; its
    # last exception line is the reason.
    reasons = re.findall(r"^\s*(\w+(?:Error|Exception): .*)$", str(exc), re.MULTILINE)
    return reasons[-1].strip() if reasons else _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def _without_env(names: Sequence[str]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
