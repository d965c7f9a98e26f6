"""The installed `vggpipe` command as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VGGPIPE = shutil.which("vggpipe") or str(Path(sys.executable).with_name("vggpipe"))


def test_demo_prints_the_config_table():
    result = subprocess.run([VGGPIPE, "demo"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["config", "weight", "layers", "parameters", "GMACs", "at", "224"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["D"] == ["16", "138,357,544", "15.47"]
    assert list(rows) == ["A", "A-LRN", "B", "C", "D", "E"]


def test_unknown_command_exits_non_zero_with_usage():
    result = subprocess.run([VGGPIPE, "nonsense"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
