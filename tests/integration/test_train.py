"""The training stage on demo data: MLflow record, net-A copy, failure recovery."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import matplotlib.image
import mlflow
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import checkpoints, cli, tracking
from pipeline.config import ConfigError, flat_params
from pipeline.recipes import recipe
from pipeline.shards import ShardStore
from pipeline.train import driver, train
from pipeline.train.config import TrainConfig
from tests.commands import vggpipe
from vgg import VGG, to_fully_convolutional


@pytest.fixture(scope="module")
def store(new_store) -> dict[str, str]:
    root, uri = new_store("train")
    return {"storage": str(root / "runs"), "uri": uri}


def _config(demo_shards, store, name, *overrides):
    return recipe(
        "smoke",
        [
            f"data={demo_shards}",
            f"storage_path={store['storage']}",
            f"tracking_uri={store['uri']}",
            f"run_name={name}",
            "data_cpus_per_task=0.25",
            *overrides,
        ],
    )


def _assert_context_tags(tags: dict[str, str]) -> None:
    """The tags mlflow.start_run would have set: user, source, the code's git commit."""
    assert tags["mlflow.user"] and tags["mlflow.source.name"]
    assert tags["mlflow.source.type"] == "LOCAL"
    repo = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert tags.get("mlflow.source.git.commit") == (head.stdout.strip() or None)


@pytest.fixture(scope="module")
def smoke_cli(demo_shards, store, ray_local) -> tuple[TrainConfig, _StreamNotingTraining]:
    """`vggpipe train` of the smoke recipe, in this process (on the session's
    Ray), its standard output in a pipe-like stream (not a terminal)."""
    sets = [
        f"storage_path={store['storage']}",
        f"tracking_uri={store['uri']}",
        "run_name=smoke-a",
        "data_cpus_per_task=0.25",
    ]
    output = _StreamNotingTraining()
    args = ["train", "--recipe", "smoke", "--data", demo_shards]
    # The smoke run trains for a second or two: poll often enough to see it.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setattr(driver, "POLL_SECONDS", 0.1)
        assert cli.main(args + [arg for item in sets for arg in ("--set", item)]) == 0
    return _config(demo_shards, store, "smoke-a"), output


class _StreamNotingTraining(io.StringIO):
    """Output that notes which lines were written while `trainer.fit()` still ran
    on the driver's fit thread."""

    def __init__(self) -> None:
        super().__init__()
        self.while_training: list[str] = []

    def write(self, text: str) -> int:
        if any(t.name == "ray-train-fit" and t.is_alive() for t in threading.enumerate()):
            self.while_training.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def smoke_run(smoke_cli):
    config, _ = smoke_cli
    return config, train(config)  # what the command's run recorded: nothing is trained again


def test_the_command_shows_progress_while_it_trains(smoke_cli):
    config, stream = smoke_cli
    output = stream.getvalue()
    total = config.epochs * config.max_steps_per_epoch
    step_line = re.compile(rf"^smoke-a: step (\d+)/{total}, .*loss \d", re.M)
    assert step_line.search(output), output
    # A step's line was printed while training went on, not after it.
    assert any(step_line.search(text) for text in stream.while_training), output
    epochs = re.findall(
        rf"^smoke-a: epoch (\d)/{config.epochs} \(step (\d+)\): train loss \d", output, re.M
    )
    assert epochs == [("1", "4"), ("2", "8")], output
    assert output.index("smoke-a: epoch 2/2") < output.index("Trained smoke-a")


def test_smoke_run_is_recorded_in_mlflow(smoke_run, store):
    config, result = smoke_run
    client = MlflowClient(store["uri"])
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == flat_params(config)
    # Per step (log_every_steps=1) and per epoch, on one axis: the global step.
    steps = config.epochs * config.max_steps_per_epoch
    for metric in ("train_loss", "lr", "images_per_second", "data_wait_fraction"):
        history = client.get_metric_history(result.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, steps + 1)), metric
    epoch_ends = [config.max_steps_per_epoch * (epoch + 1) for epoch in range(config.epochs)]
    for metric in ("epoch", "epoch_train_loss", "val_top1_error", "val_top5_error"):
        history = client.get_metric_history(result.run_id, metric)
        assert sorted(m.step for m in history) == epoch_ends, metric
    assert run.data.tags[tracking.RECIPE_TAG] == "smoke"
    sha256 = run.data.tags[tracking.DATASET_TAG]
    assert sha256 == ShardStore(config.data).manifest_sha256()
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "config.json" in artifacts
    _assert_context_tags(run.data.tags)
    # The prepared dataset as MLflow's dataset input: its digest is the
    # manifest's sha256 (as much of it as MLflow keeps), its profile the manifest's.
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert len(dataset.digest) >= 32 and sha256.startswith(dataset.digest)
    assert json.loads(dataset.source) == {"uri": config.data}
    profile = json.loads(dataset.profile)
    assert profile["manifest_sha256"] == sha256 and profile["classes"] == 10
    assert profile["images"]["val"] > 0 and profile["max_short_side"] == 128
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}
    # System metrics of the training node, sampled by rank 0 (MLflow's monitor).
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    # The training curves, drawn from the metric history.
    with tempfile.TemporaryDirectory() as folder:
        png = client.download_artifacts(result.run_id, "plots/training_curves.png", folder)
        height, width, _ = matplotlib.image.imread(png).shape
    assert width > 2 * height > 300
    logged_config = mlflow.artifacts.load_text(f"runs:/{result.run_id}/config.json")
    assert json.loads(logged_config) == config.to_dict()

    # The logged models are the nets themselves, read without unpickling, at the
    # training crop and, as dense nets, at a larger test scale.
    images = torch.randn(5, 3, config.crop_size, config.crop_size)
    larger = torch.randn(2, 3, config.crop_size + 32, config.crop_size + 48)
    epochs = {m.model_id: m.step for m in client.get_run(result.run_id).outputs.model_outputs}
    for name, path in (
        ("best_model", result.best_checkpoint),
        ("final_model", result.final_checkpoint),
    ):
        logged = tracking.load_logged_net(f"runs:/{result.run_id}/{name}", store["uri"])
        expected = checkpoints.load(path).model.eval()
        assert isinstance(logged, VGG) and not logged.training
        with torch.no_grad():
            assert torch.equal(logged(images), expected(images))
            dense = to_fully_convolutional(logged)(larger)
            assert tuple(dense.shape[:2]) == (2, expected.num_classes)
        [model] = client.search_logged_models(
            [run.info.experiment_id],
            filter_string=f"name = '{name}' AND source_run_id = '{result.run_id}'",
        )
        # Linked to the step its checkpoint was saved at (the end of one of the
        # two epochs: the last, or the best).
        assert epochs[model.model_id] in epoch_ends
    assert epochs[model.model_id] == epoch_ends[-1]  # final_model: the last epoch
    assert checkpoints.resolve(result.run_id, store["uri"]) == result.best_checkpoint


def test_checkpoint_loads_without_pickles(smoke_run):
    _, result = smoke_run
    state = checkpoints.load_training_state(result.final_checkpoint)  # weights_only=True
    assert state["epoch"] == 1 and "optimizer" in state and state["schedule"]["lr"] > 0


def test_d_from_a_records_the_copied_layers_and_they_equal_net_a(smoke_run, demo_shards, store):
    _, net_a_run = smoke_run
    # A learning rate of ~0 keeps D where its initialisation put it.
    config = _config(
        demo_shards,
        store,
        "smoke-d-from-a",
        "config=D",
        f"init_from={net_a_run.run_id}",
        "lr=1e-12",
        "epochs=1",
        "max_steps_per_epoch=1",
    )
    result = train(config)
    client = MlflowClient(store["uri"])
    record = json.loads(
        Path(
            client.download_artifacts(
                result.run_id, "init/copied_layers.json", str(Path(store["storage"]).parent / "d")
            )
        ).read_text()
    )
    assert record["init_from"] == net_a_run.run_id
    assert client.get_run(result.run_id).data.tags[tracking.INIT_FROM_TAG] == net_a_run.run_id
    net_a = checkpoints.load(net_a_run.best_checkpoint).model.state_dict()
    net_d = checkpoints.load(result.final_checkpoint).model.state_dict()
    copied = set(record["copied_parameters"])
    assert len(copied) == 14
    # Net A's convs sit at features.0, .3, .6, .8; D's at .0, .5, .10, .12 (stage
    # by stage: the same (stage, position)), and the FC layers match by index.
    pairs = {
        "features.0": "features.0",
        "features.5": "features.3",
        "features.10": "features.6",
        "features.12": "features.8",
    }
    pairs |= {f"classifier.{i}": f"classifier.{i}" for i in (0, 3, 6)}
    assert copied == {f"{layer}.{kind}" for layer in pairs for kind in ("weight", "bias")}
    for d_layer, a_layer in pairs.items():
        for kind in ("weight", "bias"):
            assert torch.allclose(net_d[f"{d_layer}.{kind}"], net_a[f"{a_layer}.{kind}"], atol=1e-6)
    # A layer that was not copied keeps its own random weights (D's stage-1 conv 2).
    assert net_d["features.2.weight"].shape != net_a[
        "features.3.weight"
    ].shape or not torch.allclose(net_d["features.2.weight"], net_a["features.3.weight"])
    assert net_d["features.2.weight"].abs().sum() > 0

    # What the workers could not start from is refused before Ray, in one line:
    # only net A's layers are copied, and resuming needs the same net.
    for overrides, refusal in (
        (["config=E", f"init_from={result.run_id}"], "init_from copies net A's layers: "),
        (["config=A", f"resume_from={result.run_id}"], "resume_from continues the same config: "),
        (["config=D", "width=0.125", f"resume_from={result.run_id}"], "has width 0.0625, this"),
    ):
        bad = _config(demo_shards, store, "smoke-bad-start", *overrides)
        with pytest.raises(ConfigError, match=re.escape(refusal)):
            train(bad)
    assert tracking.find_run("smoke-bad-start", bad.experiment, store["uri"], stage="train") is None


def _checkpoint_registered(run_dir: Path) -> bool:
    """Ray has taken a checkpoint as the one to restart from: its checkpoint
    manager's snapshot names one (a checkpoint folder alone may not be
    registered yet when a worker dies)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return "checkpoint_" in json.dumps(snapshot.get("latest_checkpoint_result"))


def _kill_a_train_worker_after_first_checkpoint(run_dir: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _checkpoint_registered(run_dir):
        time.sleep(0.1)
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        title = " ".join([process.info["name"] or "", *(process.info["cmdline"] or [])])
        if "RayTrainWorker" in title:
            os.kill(process.info["pid"], signal.SIGKILL)
            killed.append(process.info["pid"])
            return


# 30-50 s of a second smoke training: make test-extra, which .ci/run runs; make
# test keeps a killed command's resume (tests/chaos).
@pytest.mark.slow
@pytest.mark.extra
def test_killed_worker_resumes_from_its_checkpoint_with_the_same_result(
    smoke_run, demo_shards, store
):
    """The same settings as the module's smoke run under another name, with a
    worker killed after the first checkpoint: it must end with the weights the
    uninterrupted smoke run ended with, each epoch logged once."""
    _, straight = smoke_run
    killed: list[int] = []
    config = _config(demo_shards, store, "smoke-killed")
    killer = threading.Thread(
        target=_kill_a_train_worker_after_first_checkpoint,
        args=(Path(store["storage"]) / "smoke-killed", killed),
    )
    killer.start()
    interrupted = train(config)
    killer.join()
    assert killed, "no training worker was found to kill"

    client = MlflowClient(store["uri"])
    # Epoch 0 ran again after the failure, its metrics each logged once.
    epoch_ends = [config.max_steps_per_epoch * (epoch + 1) for epoch in range(config.epochs)]
    for metric in ("epoch_train_loss", "train_loss"):
        steps = sorted(m.step for m in client.get_metric_history(interrupted.run_id, metric))
        assert len(steps) == len(set(steps)), metric
    assert (
        sorted(m.step for m in client.get_metric_history(interrupted.run_id, "epoch")) == epoch_ends
    )
    # One dataset input, and system metrics continued on one step axis.
    assert len(client.get_run(interrupted.run_id).inputs.dataset_inputs) == 1
    cpu = client.get_metric_history(interrupted.run_id, "system/cpu_utilization_percentage")
    assert len({m.step for m in cpu}) == len(cpu) > 0

    resumed_weights = checkpoints.load(interrupted.final_checkpoint).model.state_dict()
    straight_weights = checkpoints.load(straight.final_checkpoint).model.state_dict()
    for name, tensor in straight_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


def test_rerunning_a_finished_run_name_resumes_it(smoke_run, store):
    config, first = smoke_run
    # Other hardware settings are the same run: nothing is trained again, and
    # the result is what the finished run recorded. Registering changes no result
    # either: the finished run's best model is registered, once however often asked.
    config = dataclasses.replace(config, data_cpus_per_task=0.5, register_as="smoke-a-net@rerun")
    again = train(config)
    assert train(config).registered == again.registered == "smoke-a-net version 1 (alias rerun)"
    assert again.run_id == first.run_id
    assert again.final_checkpoint == first.final_checkpoint
    assert again.epochs_run == first.epochs_run == 2
    assert again.metrics["val_top1_error"] == first.metrics["val_top1_error"]
    client = MlflowClient(store["uri"])
    assert client.get_run(first.run_id).info.status == "FINISHED"
    history = client.get_metric_history(first.run_id, "epoch")
    assert sorted(m.step for m in history) == [4, 8]
    version = client.get_model_version_by_alias("smoke-a-net", "rerun")
    assert (str(version.version), version.run_id) == ("1", first.run_id)
    assert len(client.search_model_versions("name = 'smoke-a-net'")) == 1
    net = tracking.load_logged_net("models:/smoke-a-net@rerun", store["uri"])
    expected = checkpoints.load(first.best_checkpoint).model
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_scale_the_shards_cannot_serve_is_refused_in_one_line_before_ray(demo_shards, tmp_path):
    """The demo shards keep short sides up to 128 pixels: S = 160 would train on
    upsampled pixels."""
    done = vggpipe(
        *("train", "--recipe", "smoke", "--data", demo_shards),
        *("--set", "scale_max=160", "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db"),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vggpipe train: error: scale_max 160 is above the 128-pixel short side that "
        f"{demo_shards} stores (its max_short_side); preprocess again with max_short_side >= 160"
    ]
    assert not (tmp_path / "mlflow.db").exists(), "refused before any run was opened"
