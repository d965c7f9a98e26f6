"""The models a run logs to MLflow: the nets themselves, and nothing a store
holds is unpickled or run when this project loads one."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline import tracking
from tests.commands import user_env, vggpipe
from vgg import VGG, build_vgg


class _Payload:
    """Unpickling this writes a file: proof that code from the store ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def logged(new_store):
    root, uri = new_store("logged-models")
    net = build_vgg("A", num_classes=10, width=0.0625, crop_size=32).eval()
    run = tracking.start_run("logged", "models", uri=uri)
    run.log_model(net, "best_model", step=3, registered_model_name="logged-net")
    run.end()
    return {"root": root, "uri": uri, "net": net, "run": run}


def _model_folder(logged) -> Path:
    version = tracking.registered_model_version("models:/logged-net/1", logged["uri"])
    [folder] = {path.parent for path in logged["root"].rglob("MLmodel")}
    assert version is not None
    return folder


def test_a_logged_model_loads_as_the_net_at_any_size(logged):
    net = tracking.load_logged_net("models:/logged-net/1", logged["uri"])
    assert isinstance(net, VGG) and net.arguments() == logged["net"].arguments()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(images), logged["net"](images))
    # MLflow's own loader gives the same net, and scores larger images densely.
    mlflow.set_tracking_uri(logged["uri"])
    model = mlflow.pyfunc.load_model("models:/logged-net/1")
    assert torch.equal(model.unwrap_python_model().net(images), net(images))
    assert model.predict(torch.randn(2, 3, 64, 96).numpy()).shape == (2, 10)
    [output] = tracking.get_run(logged["run"].run_id, logged["uri"]).outputs.model_outputs
    assert output.step == 3
    # Logged from code: no pickle among the model's files.
    folder = _model_folder(logged)
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".pth", ".pt")]


def test_a_pickle_swapped_into_the_store_is_never_run(logged, tmp_path, demo_shards):
    marker = tmp_path / "code-ran"
    folder = _model_folder(logged)
    payload = pickle.dumps(_Payload(marker))
    for path in folder.rglob("model.safetensors"):
        path.write_bytes(payload)
    (folder / "python_model.pkl").write_bytes(payload)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "model.pth").write_bytes(payload)

    with pytest.raises(Exception):  # noqa: B017 (any refusal will do; running the payload will not)
        tracking.load_logged_net("models:/logged-net/1", logged["uri"])
    assert not marker.exists()

    # The command a user runs: refused in one line, and still nothing ran.
    result = vggpipe(
        "evaluate", "models:/logged-net/1", "--data", demo_shards,
        env=user_env() | {"MLFLOW_TRACKING_URI": logged["uri"]},
    )  # fmt: skip
    assert result.returncode != 0 and not marker.exists()
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_import_pipeline_turns_mlflows_pickle_loading_off_unless_set():
    probe = (
        "import pipeline\n"
        "from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION as allowed\n"
        "print(allowed.get())\n"
    )
    for given, expected in ((None, "False"), ("true", "True")):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
        if given is not None:
            env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = given
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True
        )
        assert done.stdout.strip().splitlines()[-1:] == [expected], done.stdout + done.stderr
