"""Joining Ray: one way for every driver to connect to a cluster or start a
local instance."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Where Ray 2.60 keeps the token it creates for a head it starts (token
# authentication is on by default); it writes the file readable by everyone.
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def connect(address: str | None = None, **options) -> bool:
    """`ray.init(address, **options)` unless this process is connected already
    (`log_to_driver=False` unless given); True when this call connected. The
    token file of a head it started is then made private to its user."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, **({"log_to_driver": False} | options))
    _make_token_private()
    return True


def _make_token_private() -> None:
    try:
        mode = RAY_TOKEN_FILE.stat().st_mode
        if RAY_TOKEN_FILE.owner() == Path.home().owner() and mode & 0o077:
            os.chmod(RAY_TOKEN_FILE, stat.S_IMODE(mode) & 0o600)
    except OSError:
        pass  # no token file, or not ours to change
