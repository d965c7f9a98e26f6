"""benchmarks.ingest refuses bad read-task settings in one line, before it
makes a photo set or starts Ray."""

import pytest

from benchmarks import ingest


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows-per-task", "0"], "--rows-per-task must be at least 1; got 0"),
        (["--cpus-per-task", "0"], "--cpus-per-task must be above 0; got 0.0"),
        (["--cpus-per-task", "nan"], "--cpus-per-task must be above 0; got nan"),
    ],
)
def test_bad_read_task_settings_exit_2_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ingest.main([*argv, "--work", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert list(tmp_path.iterdir()) == []
