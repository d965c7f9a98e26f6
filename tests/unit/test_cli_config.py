"""Config files on every stage: `--print-config` prints the whole resolved
config, `--config FILE` reads it back (YAML, or the JSON a run logs as
config.json) to the same config, recipe < file < --set and flags, and a bad
file is refused in one line naming the file and the field. Also: only the
project's user errors become one line; a bug keeps its traceback."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main, stages
from pipeline.config import ConfigError
from pipeline.recipes import recipe, tune_recipe, workflow_recipe


def _printed(capsys, *argv: str, form: str = "yaml") -> str:
    assert main([*argv, "--print-config", form]) == 0
    return capsys.readouterr().out


def _error_line(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vggpipe {argv[0]}: error: "), lines
    return lines[0]


def test_a_printed_training_config_runs_as_the_same_config(tmp_path, capsys):
    # The acceptance: `train --recipe smoke --print-config > c.yaml`, then
    # `train --config c.yaml --data ...` is the same config, so the same run.
    (tmp_path / "c.yaml").write_text(_printed(capsys, "train", "--recipe", "smoke"))
    again = _printed(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--data", "/d")
    expected = recipe("smoke", ["data=/d"])
    assert again == _printed(capsys, "train", "--recipe", "smoke", "--data", "/d")
    from pipeline.config import apply_values, read_config_file

    (tmp_path / "again.yaml").write_text(again)
    loaded = apply_values(None, read_config_file(str(tmp_path / "again.yaml")), "f", type(expected))
    assert loaded == expected
    assert loaded.flat_params() == expected.flat_params() and loaded.name == expected.name


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "--recipe", "tune-smoke", "--set", "grid.width=0.0625,0.125"],
        ["run", "--recipe", "demo", "--data", "/d"],
        ["run", "--recipe", "smoke", "--data", "/d", "--train-set", "num_workers=2"],
        ["evaluate", "run-a", "run-b", "--ensemble", "--scales", "256,288", "--scales", "single"],
        ["preprocess", "src", "out", "--seed", "3"],
        ["demo", "--work-dir", "w"],
    ],
    ids=["tune", "run-demo", "run-smoke", "evaluate", "preprocess", "demo"],
)
def test_every_stage_prints_a_config_that_reads_back_the_same(argv, tmp_path, capsys):
    printed = _printed(capsys, *argv)
    (tmp_path / "c.yaml").write_text(printed)
    stage = [argv[0], *(["src", "out"] if argv[0] == "preprocess" else [])]
    assert _printed(capsys, *stage, "--config", str(tmp_path / "c.yaml")) == printed
    # The JSON a run logs (config.to_json, as config.json) reads back the same too.
    (tmp_path / "config.json").write_text(_printed(capsys, *argv, form="json"))
    assert _printed(capsys, *stage, "--config", str(tmp_path / "config.json")) == printed


def test_recipe_then_file_then_set_and_flags(tmp_path, capsys):
    (tmp_path / "part.yaml").write_text("recipe: smoke\nlr: 1e-3\nepochs: 5\nseed: 7\n")
    config = stages._train_config(
        stages_args(
            "train",
            "--config",
            str(tmp_path / "part.yaml"),
            "--set",
            "epochs=6",
            "--experiment",
            "e",
            "--run-name",
            "r",
            "--tracking-uri",
            "sqlite:///x.db",
        )  # fmt: skip
    )
    # The file's recipe is the base; the file wins over it; --set and flags over the file.
    assert (config.recipe, config.width, config.lr, config.seed) == ("smoke", 0.0625, 1e-3, 7)
    assert config.epochs == 6
    assert (config.experiment, config.run_name, config.tracking_uri) == ("e", "r", "sqlite:///x.db")
    tune = stages._tune_config(
        stages_args("tune", "--recipe", "tune-smoke", "--run-name", "s", "--experiment", "e")
    )
    assert (tune.name, tune.train.experiment) == ("s", "e")
    assert tune == tune_recipe("tune-smoke", ["name=s", "experiment=e"])


def stages_args(*argv: str):
    from pipeline.cli import build_parser

    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lrate: 1\n", "bad.yaml: unknown field 'lrate'"),
        ("lr: fast\n", "bad.yaml: lr takes a float; got 'fast'"),
        ("lr: -1\n", "bad.yaml: lr must be > 0"),
        ("epochs: 2.5\n", "bad.yaml: epochs takes a int"),
        ("use_gpu: 3\n", "bad.yaml: use_gpu takes a bool"),
        ("lr: [1\n", "bad.yaml is not valid YAML"),
        ("- lr\n", "bad.yaml holds a list"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_field(text, expected, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(text)
    line = _error_line(capsys, "train", "--recipe", "smoke", "--config", str(tmp_path / "bad.yaml"))
    assert expected in line


def test_file_errors_in_a_sweep_and_a_workflow_name_the_field(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("train:\n  crop_size: 33\n")
    line = _error_line(
        capsys, "tune", "--recipe", "tune-smoke", "--config", str(tmp_path / "t.yaml")
    )
    assert "t.yaml: train: crop_size must be a positive multiple of 32" in line
    (tmp_path / "w.json").write_text(json.dumps({"from_a": ["Z"]}))
    line = _error_line(capsys, "run", "--recipe", "smoke", "--config", str(tmp_path / "w.json"))
    assert "w.json: from_a takes configs from" in line
    assert "does not exist" in _error_line(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert "--recipe or --config is required" in _error_line(capsys, "train")


def test_a_bug_keeps_its_traceback_and_a_wrapped_user_error_is_one_line(monkeypatch, capsys):
    def bug(args):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(stages, "_train_config", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["train", "--recipe", "smoke"])

    def wrapped(args):
        # What Ray hands back: its own error, the user's error as the cause.
        raise RuntimeError("a Ray task failed") from ConfigError("lr must be > 0; got -1")

    monkeypatch.setattr(stages, "_train_config", wrapped)
    assert "lr must be > 0" in _error_line(capsys, "train", "--recipe", "smoke")


def test_params_read_as_written_and_a_run_logged_before_still_matches():
    config = workflow_recipe("smoke", ["data=/d"])
    params = config.flat_params()
    assert (params["from_a"], params["random_init"], params["ensemble"]) == ("B", "", "A-36,B-36")
    assert params["run_name"] == "" and params["base_scale"] == "36"
    sweep = tune_recipe("tune-smoke").flat_params()
    assert (sweep["lrs"], sweep["scales"], sweep["lr_range"]) == ("0.002,1e-05", "36,36:44", "")
    # A run logged before params were readable wrote str(("B",)); it is the same setting.
    earlier = {**params, "from_a": "('B',)", "ensemble": "('A-36', 'B-36')"}
    assert config.changed_params(earlier) == {}
    assert config.changed_params({**params, "from_a": "C"}) == {"from_a": ("C", "B")}
