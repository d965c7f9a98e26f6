"""The installed `vggpipe` command as a user runs it, in its own process, for
every test that drives the CLI (one definition, not one per module)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

BIN = Path(sys.executable).parent
VGGPIPE = shutil.which("vggpipe", path=str(BIN)) or str(BIN / "vggpipe")


def user_env() -> dict[str, str]:
    """This environment without a Ray address a developer may have exported:
    a test must never join someone's cluster."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def vggpipe(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`vggpipe ARGS...`, its output captured as text; never raises on a
    non-zero exit (tests assert on it)."""
    return subprocess.run(
        [VGGPIPE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else user_env(),
        cwd=cwd,
    )


def one_error_line(stderr: str, command: str) -> str:
    """The one `vggpipe COMMAND: error: ...` line of a refused command's stderr,
    asserting there is exactly one and no traceback (Ray's and MLflow's own
    log lines may stand beside it)."""
    errors = [line for line in stderr.splitlines() if f"vggpipe {command}: error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]
