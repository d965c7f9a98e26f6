"""The errors users see as one line (`vggpipe ...: error: <message>`, exit 2).

Only these: any other exception is a bug and keeps its traceback. Code that
refuses what a user gave (a value, a path, a file) raises one of them, never a
bare ValueError or FileNotFoundError.

They live here, below every other module, so that the CLI, the Jobs API client
and the stages raise the same classes without importing each other.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option): printed as one line."""


class ConfigError(UserError, ValueError):
    """A config value is out of its allowed range; the message names the field.

    Also a ValueError, so that Python callers that validate their own input the
    usual way catch it."""


class NotFoundError(UserError, FileNotFoundError):
    """A path, dataset, run or model the user named does not exist.

    Also a FileNotFoundError, so that callers that look for a missing file the
    usual way still catch it."""


class CorruptShardError(UserError):
    """A shard that cannot be read, or a row that does not match its checksum;
    the message names the shard and suggests `vggpipe verify`."""

    # Ray Train and Ray Data hand a worker's error to the driver as text inside
    # their own errors, so the driver finds this one by its words.
    PATTERN = re.compile(r"shard \S+ [^\n]*?: the data is damaged; `vggpipe verify [^`]+`[^\n]*")

    @classmethod
    def about(cls, shard: str, problem: str, data: str) -> CorruptShardError:
        return cls(
            f"shard {shard} {problem}: the data is damaged; `vggpipe verify {data}` checks "
            "every shard"
        )


def user_error_within(error: BaseException) -> str | None:
    """The one-line message of a `UserError` raised inside `error` (itself, a
    cause, a Ray worker's failure), or of a corrupt shard named in the text of
    one (what crosses Ray Data and Ray Train only as text); None when there is none."""
    chain, pending = [], [error]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += [e for e in [getattr(current, "cause", None)] if isinstance(e, BaseException)]
        failures = getattr(current, "worker_failures", None)
        pending += list(failures.values()) if isinstance(failures, dict) else []
    for current in chain:
        if found := CorruptShardError.PATTERN.search(str(current)):
            return found.group(0)
    for current in chain:
        # Ray re-raises a task's error as a subclass of its own error and of the
        # original; the original's text is its `cause`'s.
        if isinstance(current, UserError) and not isinstance(
            getattr(current, "cause", None), BaseException
        ):
            return str(current).splitlines()[0]
    return None
