"""The installed `vggpipe` command as a user runs it."""

from __future__ import annotations

from tests.commands import vggpipe


def test_demo_plan_writes_the_demo_data_and_lists_the_papers_stages(tmp_path):
    result = vggpipe("demo", "--plan", "--work-dir", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "source" / "train").is_dir()
    stages = {line.split()[0]: line for line in result.stdout.splitlines() if "to run" in line}
    assert list(stages)[0] == "preprocess"
    # The deep net from net A, and the same net from random weights beside it.
    assert stages["train/D-72"].endswith("<- preprocess, train/A-72")
    assert stages["train/D-72-random"].endswith("<- preprocess")
    assert stages["train/D-72-144"].endswith("<- preprocess, train/D-108")
    assert {"evaluate/D-72", "evaluate/D-72-random", "ensemble", "tables"} <= set(stages)


def test_run_with_bad_input_exits_non_zero_with_one_line(tmp_path):
    missing = vggpipe("run", "--recipe", "smoke", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"vggpipe run: error: data {str(tmp_path / 'nowhere')!r} does not exist"
    ]
    unknown = vggpipe(
        "run", "--recipe", "smoke", "--data", ".", "--set", "ensemble=A-36,Q-36", cwd=tmp_path
    )
    assert unknown.returncode == 2
    assert "ensemble names nets not in the graph: Q-36" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_unknown_command_exits_non_zero_with_usage():
    result = vggpipe("nonsense")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
