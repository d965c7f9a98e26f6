"""The installed `vggpipe` command as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VGGPIPE = shutil.which("vggpipe") or str(Path(sys.executable).with_name("vggpipe"))


def test_demo_plan_writes_the_demo_data_and_lists_the_papers_stages(tmp_path):
    result = subprocess.run(
        [VGGPIPE, "demo", "--plan", "--work-dir", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "demo" / "source" / "train").is_dir()
    stages = {line.split()[0]: line for line in result.stdout.splitlines() if "to run" in line}
    assert list(stages)[0] == "preprocess"
    # The deep net from net A, and the same net from random weights beside it.
    assert stages["train/D-36"].endswith("<- preprocess, train/A-36")
    assert stages["train/D-36-random"].endswith("<- preprocess")
    assert stages["train/D-36-72"].endswith("<- preprocess, train/D-54")
    assert {"evaluate/D-36", "evaluate/D-36-random", "ensemble", "tables"} <= set(stages)


def test_run_with_bad_input_exits_non_zero_with_one_line(tmp_path):
    missing = subprocess.run(
        [VGGPIPE, "run", "--recipe", "smoke", "--data", str(tmp_path / "nowhere")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"vggpipe run: error: data {str(tmp_path / 'nowhere')!r} does not exist"
    ]
    unknown = subprocess.run(
        [VGGPIPE, "run", "--recipe", "smoke", "--data", ".", "--set", "ensemble=A-36,Q-36"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2
    assert "ensemble names nets not in the graph: Q-36" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_unknown_command_exits_non_zero_with_usage():
    result = subprocess.run([VGGPIPE, "nonsense"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
