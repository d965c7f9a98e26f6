"""One live command per run or output: a lease file in the folder it writes.

Two commands with one run name would write one MLflow run and one checkpoint
folder together (every epoch logged twice, two sets of models); two
preprocesses of one output would delete each other's temporary files. The first
takes `<folder>/vggpipe-lease.json` (a training run's `<storage>/<run name>`,
a preprocess output); a second finds it and is refused while the holder lives,
and takes it over once the holder is dead.

Whether the holder lives: on the same machine (same host name and boot), its
process is looked up (pid and start time, so a reused pid is not mistaken for
it); on another machine, which this process cannot see, the holder renews the
file every `RENEW_SECONDS` and is taken for dead `STALE_SECONDS` after the last
renewal. Works on any `pyarrow.fs` storage; on a local folder the first take is
an exclusive create, on object stores it is write-then-read-back.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.errors import UserError
from pipeline.shards import resolve_filesystem

LEASE_FILE = "vggpipe-lease.json"
RENEW_SECONDS = 15.0
STALE_SECONDS = 60.0


class LeaseHeld(UserError):
    """Another live command holds the run."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None when
    there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so count from its ")".
    return stat.rsplit(")", 1)[1].split()[19]


def _this_machine() -> dict[str, str]:
    return {"host": socket.gethostname(), "boot_id": _boot_id()}


def holder_alive(holder: dict) -> bool:
    if {k: holder.get(k) for k in ("host", "boot_id")} == _this_machine():
        return _process_start(int(holder.get("pid", -1))) == holder.get("pid_start")
    return time.time() - float(holder.get("renewed", 0)) < STALE_SECONDS


class RunLease:
    """`with RunLease(folder, "run 'x'"):` holds `folder` for the block; `what`
    names it in the refusal."""

    def __init__(self, folder: str, what: str) -> None:
        self.fs, root = resolve_filesystem(folder)
        self.folder = root.rstrip("/")
        self.path = f"{self.folder}/{LEASE_FILE}"
        self.what = what
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> dict:
        pid = os.getpid()
        return {
            "owner": self.owner,
            **_this_machine(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "renewed": time.time(),
        }

    def _read(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return json.loads(stream.read().decode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or garbage: nobody's lease

    def _write(self) -> None:
        temporary = f"{self.path}.{self.owner}.tmp"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(json.dumps(self._record()).encode())
        self.fs.move(temporary, self.path)

    def _create_exclusively(self) -> bool:
        """On a local folder: create the file only if there is none (atomic)."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return False
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as file:
            json.dump(self._record(), file)
        return True

    def acquire(self) -> None:
        self.fs.create_dir(self.folder, recursive=True)
        if not self._create_exclusively():
            holder = self._read()
            if holder and holder.get("owner") != self.owner and holder_alive(holder):
                raise LeaseHeld(_held_message(self.what, holder))
            self._write()
            if (self._read() or {}).get("owner") != self.owner:
                raise LeaseHeld(_held_message(self.what, self._read() or {}))
        self._renewer = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                if (self._read() or {}).get("owner") == self.owner:
                    self._write()
            except OSError:
                pass  # storage briefly unreachable: the next renewal tries again

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if (self._read() or {}).get("owner") == self.owner:
            self.fs.delete_file(self.path)

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _held_message(what: str, holder: dict) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("renewed", 0))))
    return (
        f"{what} is in use by another live command (pid {holder.get('pid')} on "
        f"{holder.get('host')}, last seen {since}); wait for it to end, or give it another name"
    )


__all__ = ["LEASE_FILE", "LeaseHeld", "RunLease", "holder_alive"]
