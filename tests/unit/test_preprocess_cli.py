"""`vggpipe preprocess`, `verify` and `demo-data` on bad input: exit non-zero with
one line, before any Ray work."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.demo_data import make_demo_data


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_missing_source(tmp_path, capsys):
    line = _one_line_error(capsys, ["preprocess", str(tmp_path / "nowhere"), str(tmp_path / "o")])
    assert line.startswith("vggpipe preprocess: error: source")
    assert "does not exist" in line


def test_source_in_no_known_layout(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    line = _one_line_error(capsys, ["preprocess", str(tmp_path / "src"), str(tmp_path / "o")])
    assert "no ILSVRC-2012 layout" in line
    assert "(3) tars" in line


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--max-short-side", "0", "max_short_side"),
        ("--jpeg-quality", "0", "jpeg_quality"),
        ("--shard-rows", "-5", "shard_rows"),
        ("--max-rejected-fraction", "2", "max_rejected_fraction"),
    ],
)
def test_bad_option_values(tmp_path, capsys, option, value, field):
    line = _one_line_error(
        capsys, ["preprocess", str(tmp_path), str(tmp_path / "o"), option, value]
    )
    assert field in line


def test_verify_of_something_that_is_no_output(tmp_path, capsys):
    line = _one_line_error(capsys, ["verify", str(tmp_path)])
    assert "holds no manifest.json" in line


def test_demo_data_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("x")
    line = _one_line_error(capsys, ["demo-data", str(tmp_path)])
    assert "not empty" in line


def test_demo_data_reports_what_it_wrote(tmp_path, capsys):
    assert (
        main(["demo-data", str(tmp_path / "d"), "--layout", "tars", "--quirks", "--per-class", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "layout tars, val labels devkit" in out
    assert "quirk: n00000000_90001.JPEG (cmyk)" in out
    assert (tmp_path / "d" / "ILSVRC2012_img_train.tar").is_file()


def test_help_lists_the_new_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("preprocess", "verify", "demo-data"):
        assert name in out


def test_reruns_refuse_other_parameters_on_a_finished_output(tmp_path, capsys):
    # A finished output made elsewhere; the refusal needs neither the source nor Ray.
    from pipeline.manifest import Manifest
    from pipeline.shards import ShardStore

    store = ShardStore(str(tmp_path / "out"))
    source = make_demo_data(tmp_path / "src", per_class=2).root
    params = {
        "max_short_side": 512,
        "jpeg_quality": 90,
        "shard_rows": 1000,
        "seed": 0,
        "stats_images": 10000,
    }
    store.write_manifest(
        Manifest(
            {"uri": str(source), "layout": "folders", "val_labels": "folders"},
            params,
            {},
            [],
            [],
            None,
        )
    )

    line = _one_line_error(
        capsys, ["preprocess", str(source), str(tmp_path / "out"), "--seed", "7"]
    )
    assert "seed 0 there, 7 asked" in line
    assert main(["preprocess", str(source), str(tmp_path / "out")]) == 0
    assert "already complete" in capsys.readouterr().out
