"""`vggpipe submit` refuses a credential bound for the job's metadata (its
runtime_env and entrypoint, which every Jobs API client can list) with exit 2
and one line naming where it is, before it contacts the cluster, and without
repeating the secret. Run through the installed command against an address
where a socket listens, to see that nothing connected."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pipeline import submit as submit_module
from tests.commands import user_env, vggpipe

SECRET = "s3cret-9f2c41"  # a value that appears nowhere else


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A Jobs API address whose socket accepts connections but never answers:
    a connection attempt is seen, and nothing is sent anywhere."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def connected(sock: socket.socket) -> bool:
    try:
        peer, _ = sock.accept()
    except BlockingIOError:
        return False
    peer.close()
    return True


def submit(address: str, *words: str, env: dict[str, str] | None = None):
    environment = {k: v for k, v in user_env().items() if k != "MLFLOW_TRACKING_URI"}
    environment.update(env or {})
    # Were the refusal missing, the command would wait on the silent listener
    # until this timeout.
    return vggpipe(
        "submit", "preprocess", "--address", address, *words, env=environment, timeout=30
    )


REFUSED = [
    # (what the user gives, the name the one line must carry)
    (
        {"env": {"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@mlflow:5000"}},
        "MLFLOW_TRACKING_URI (forwarded from this environment)",
    ),
    (["--env", f"MLFLOW_TRACKING_URI=http://alice:{SECRET}@mlflow:5000"], "MLFLOW_TRACKING_URI"),
    (["--env", f"MLFLOW_TRACKING_PASSWORD={SECRET}"], "MLFLOW_TRACKING_PASSWORD"),
    (["--env", f"MLFLOW_TRACKING_TOKEN={SECRET}"], "MLFLOW_TRACKING_TOKEN"),
    (["--env", f"AWS_SECRET_ACCESS_KEY={SECRET}"], "AWS_SECRET_ACCESS_KEY"),
    (["--env", f"AWS_SESSION_TOKEN={SECRET}"], "AWS_SESSION_TOKEN"),
    (["--env", f"WANDB_API_KEY={SECRET}"], "WANDB_API_KEY"),
    (["--env", f"RAY_AUTH_TOKEN={SECRET}"], "RAY_AUTH_TOKEN"),
    (["--env", f"DATABASE_URL=postgresql://mlflow:{SECRET}@db:5432/mlflow"], "DATABASE_URL"),
    (["--env", f"CACHE=redis://:{SECRET}@cache:6379"], "CACHE"),
    (["--working-dir", f"https://bob:{SECRET}@example.com/vggpipe.zip"], "--working-dir"),
    (["--", "in", "out", "--data", f"https://bob:{SECRET}@example.com/x"], "stage argument 4"),
    (["--", "in", f"--source=https://bob:{SECRET}@example.com/x"], "stage argument 2"),
    (["--", f"https://bob:{SECRET}@example.com/x", "out"], "stage argument 1"),
]


@pytest.mark.parametrize(("given", "named"), REFUSED, ids=[n for _, n in REFUSED])
def test_credential_is_refused_in_one_line_before_contacting_the_cluster(listener, given, named):
    address, sock = listener
    if isinstance(given, dict):
        done = submit(address, "--", "in", "out", **given)
    else:
        done = submit(address, *given)

    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vggpipe submit: error: "), done.stderr
    assert named in lines[0]
    assert "set it on the cluster instead" in lines[0]
    assert SECRET not in done.stdout + done.stderr
    assert not connected(sock), "the cluster was contacted before the refusal"


def test_no_credential_goes_on_to_contact_the_cluster():
    with socket.socket() as sock:  # a port where nothing listens once closed
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"

    # Nothing to refuse, so the command gets as far as the address.
    done = submit(
        address,
        *("--env", "TOKENIZERS_PARALLELISM=false", "--env", "AWS_ACCESS_KEY_ID=AKIAEXAMPLE"),
        *("--", "s3://bucket/imagenet", "http://host:5000/p?mail=a@b"),
        env={"MLFLOW_TRACKING_URI": "http://alice@mlflow:5000"},
    )

    assert done.returncode == 2
    assert f"no Ray Jobs API answers at {address}" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("MLFLOW_TRACKING_PASSWORD", True),
        ("MLFLOW_TRACKING_TOKEN", True),
        ("AWS_SESSION_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("OPENAI_API_KEY", True),
        ("HF_TOKEN", True),
        ("DB_PASSWD", True),
        ("mlflow_tracking_password", True),
        ("MLFLOW_TRACKING_URI", False),
        ("PYTHONUNBUFFERED", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("AWS_ACCESS_KEY_ID", False),
        ("RAY_AUTH_MODE", False),
        ("RAY_AUTH_TOKEN_PATH", False),
        ("POSTGRES_PASSWORD_FILE", False),
    ],
)
def test_secret_names(name, secret):
    assert submit_module.secret_name(name) is secret


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("http://alice:pw@mlflow:5000", True),
        ("redis://:pw@cache:6379/0", True),
        ("--data=s3://k:pw@bucket/x", True),
        ("http://mlflow:5000", False),
        ("http://alice@mlflow:5000", False),
        ("http://alice:@mlflow:5000", False),
        ("http://mlflow:5000/ajax?mail=a@b", False),
        ("s3://bucket/imagenet", False),
    ],
)
def test_uri_passwords(text, password):
    assert submit_module.has_uri_password(text) is password
