"""Bad input gives one line and a non-zero exit, never a traceback: a table of
the inputs a probe of the commands found (and a few more), each run through
`pipeline.cli.main`, the function the installed `vggpipe` calls, in this
process (the session's Ray where a case needs one)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.ray


class _Payload:
    """What a hostile .pth holds: unpickling it would call os.system."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/vggpipe-bad-input-ran",))


def _dataset_copy(demo_shards: str, root: Path, edit) -> str:
    data = root / "data"
    shutil.copytree(demo_shards, data)
    edit(data)
    return str(data)


def _manifest_edit(change):
    def edit(data: Path) -> None:
        manifest = json.loads((data / "manifest.json").read_text())
        change(manifest)
        (data / "manifest.json").write_text(json.dumps(manifest))

    return edit


def _case_output_is_a_file(root, demo_shards):
    (root / "a-file").write_text("not a folder")
    return ["preprocess", demo_shards, str(root / "a-file")], "is a file"


def _case_storage_below_a_file(root, demo_shards):
    (root / "a-file").write_text("not a folder")
    storage = f"storage_path={root / 'a-file' / 'runs'}"
    return ["train", "--recipe", "smoke", "--data", demo_shards, "--set", storage], "is a file"


def _case_manifest_without_classes(root, demo_shards):
    data = _dataset_copy(demo_shards, root, _manifest_edit(lambda m: m.pop("classes")))
    return ["train", "--recipe", "smoke", "--data", data], "manifest.json is not a valid manifest"


def _case_garbage_manifest(root, demo_shards):
    data = _dataset_copy(
        demo_shards, root, lambda d: (d / "manifest.json").write_bytes(b"\x00garbage")
    )
    return ["verify", data], f"{data}/manifest.json is not a valid manifest"


def _case_manifest_naming_a_file_outside(root, demo_shards):
    def outside(manifest):
        manifest["splits"]["val"]["shards"][0]["path"] = "../../../../etc/passwd"

    data = _dataset_copy(demo_shards, root, _manifest_edit(outside))
    return ["verify", data], "names a shard outside it: '../../../../etc/passwd'"


def _case_pickle_pth(root, demo_shards):
    (root / "net.pth").write_bytes(pickle.dumps(_Payload()))
    command = ["evaluate", str(root / "net.pth"), "--data", demo_shards]
    return command, "not a state dict that loads without running code"


def _case_garbage_pth(root, demo_shards):
    (root / "net.pth").write_bytes(b"garbage, not a zip or a pickle")
    command = ["evaluate", str(root / "net.pth"), "--data", demo_shards]
    return command, "not a state dict that loads without running code"


def _case_run_name_with_a_quote(root, demo_shards):
    command = ["train", "--recipe", "smoke", "--data", demo_shards, "--set", "run_name=it's"]
    return command, "run_name must be a name without"


def _case_run_name_leaving_storage(root, demo_shards):
    command = ["train", "--recipe", "smoke", "--data", demo_shards, "--set", "run_name=../escape"]
    return command, "run_name must be a name without"


def _case_sweep_name_leaving_storage(root, demo_shards):
    command = ["tune", "--recipe", "tune-smoke", "--data", demo_shards, "--set", "name=../up"]
    return command, "name must be a name without"


CASES = [
    _case_output_is_a_file,
    _case_storage_below_a_file,
    _case_manifest_without_classes,
    _case_garbage_manifest,
    _case_manifest_naming_a_file_outside,
    _case_pickle_pth,
    _case_garbage_pth,
    _case_run_name_with_a_quote,
    _case_run_name_leaving_storage,
    _case_sweep_name_leaving_storage,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("_case_") for c in CASES])
def test_bad_input_exits_non_zero_in_one_line(case, demo_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    Path("/tmp/vggpipe-bad-input-ran").unlink(missing_ok=True)
    command, expected = case(tmp_path, demo_shards)
    code = main(command)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith(f"vggpipe {command[0]}: error: "), err
    assert expected in lines[0]
    assert not Path("/tmp/vggpipe-bad-input-ran").exists()  # the payload never ran


def test_a_source_file_gone_since_the_plan_is_named_in_one_line(
    demo_shards, tmp_path, capsys, ray_local
):
    """A killed preprocess left its plan; a source image deleted before the rerun
    is named by the Ray task that misses it, in one line."""
    from pipeline.demo_data import make_demo_data
    from pipeline.preprocess.config import PreprocessConfig
    from pipeline.preprocess.plan import list_source, make_plan
    from pipeline.shards import ShardStore
    from pipeline.sources import open_source

    make_demo_data(tmp_path / "source", per_class=3)
    output = tmp_path / "shards"
    config = PreprocessConfig(max_short_side=64)
    source = open_source(str(tmp_path / "source"))
    make_plan(ShardStore(str(output)), source, list_source(source, False), config)
    gone = next((tmp_path / "source" / "train").rglob("*.JPEG"))
    gone.unlink()
    code = main(["preprocess", str(tmp_path / "source"), str(output), "--max-short-side", "64",
                 "--no-progress"])  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2
    assert len(lines) == 1 and gone.name in lines[0] and "plan.arrow" in lines[0]
