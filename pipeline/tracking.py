"""MLflow, and only here: tracking URI, runs, params, metrics, artifacts, models.

The default store is a SQLite file in the working folder (`./mlflow.db`), so
`mlflow ui --backend-store-uri sqlite:///mlflow.db` browses it with no server;
`MLFLOW_TRACKING_URI` or a config's `tracking_uri` points at a tracking server
instead (what a multi-node cluster needs: its workers cannot share a SQLite file).

A run is found again by its name (tag `vggpipe.run_name`) in its experiment,
so running the same name again continues the same MLflow run.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

import vgg
from pipeline.errors import ConfigError, NotFoundError

DEFAULT_STORE = "mlflow.db"
RUN_NAME_TAG = "vggpipe.run_name"
STAGE_TAG = "vggpipe.stage"
RECIPE_TAG = "vggpipe.recipe"
BEST_CHECKPOINT_TAG = "vggpipe.checkpoint.best"
FINAL_CHECKPOINT_TAG = "vggpipe.checkpoint.final"
INIT_FROM_TAG = "vggpipe.init_from"
DATASET_TAG = "vggpipe.dataset.manifest_sha256"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI draws the tree from it

# MLflow draws a progress bar per artifact download, logging a model included:
# noise for the small files this project moves. Off unless the user set it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def model_requirements() -> list[str]:
    """What a logged model needs to load (torch, and what the bundled `vgg`
    imports) at the versions installed here: MLflow would infer them by loading
    the model in a subprocess, seconds per model (benchmarks/log_model.py)."""
    from importlib.metadata import version

    names = ("mlflow", "torch", "numpy", "pillow", "safetensors")
    return [f"{name}=={version(name)}" for name in names]


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else MLFLOW_TRACKING_URI, else ./mlflow.db as an
    absolute SQLite URI (workers on this machine resolve it alike)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def client(uri: str | None = None) -> MlflowClient:
    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_id(name: str, uri: str | None = None) -> str:
    """The id of experiment `name`, created when missing. Another process may
    create it between the lookup and the creation (two commands, or a command
    and the UI, starting at once): then its id is looked up again."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(
            name, artifact_location=_artifact_location(name, uri)
        )
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _artifact_location(experiment: str, uri: str | None) -> str | None:
    """Beside a SQLite store, in `mlruns/<experiment>`: MLflow's default is
    ./mlruns of whatever folder the first command ran in, which scatters one
    store's artifacts over working folders (a server decides for itself)."""
    uri = tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).parent / "mlruns"
    return (folder / re.sub(r"[^A-Za-z0-9._-]", "_", experiment)).as_uri()


def find_run(
    name: str,
    experiment: str,
    uri: str | None = None,
    *,
    stage: str | None = None,
    parent_run_id: str | None = None,
):
    """The newest run tagged with `name` in `experiment`, or None. With `stage`
    (or `parent_run_id`), only a run of that stage kind (or nested under that
    parent) counts: a training run and a workflow may share a name, and neither
    is the other's to reopen."""
    mlflow_client = client(uri)
    found = mlflow_client.search_runs(
        [experiment_id(experiment, uri)],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in found:
        tags = run.data.tags
        if (stage is None and parent_run_id is None) or (
            (stage is not None and tags.get(STAGE_TAG) == stage)
            or (parent_run_id is not None and tags.get(PARENT_TAG) == parent_run_id)
        ):
            return run
    return None


@dataclass(frozen=True)
class Run:
    """One MLflow run in one store: the handle every stage logs through, so no
    call repeats (run_id, ..., uri). Plain values: it crosses the Ray boundary."""

    run_id: str
    uri: str

    @property
    def client(self) -> MlflowClient:
        return client(self.uri)

    def get(self):
        """The run as MLflow has it now (status, params, metrics, tags)."""
        return self.client.get_run(self.run_id)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def log_params(self, params: Mapping[str, str]) -> None:
        entries = [mlflow.entities.Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(entries), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=entries[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not metrics:
            return
        now = int(time.time() * 1000)
        entries = [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def _steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_metrics_once(self, metrics: Mapping[str, float], step: int) -> None:
        """Log the metrics that have no value at `step` yet: work done again
        after a crash (an epoch, an evaluation) records each value once."""
        self.log_metrics({k: v for k, v in metrics.items() if step not in self._steps(k)}, step)

    def next_step(self, key: str) -> int:
        """One past the last step `key` was logged at (0 when never): summaries
        of a resumed run (the workflow's stage counts) get a step per attempt."""
        return max(self._steps(key), default=-1) + 1

    def set_tags(self, tags: Mapping[str, str]) -> None:
        mlflow_client = self.client
        for key, value in tags.items():
            mlflow_client.set_tag(self.run_id, key, str(value))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, value: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, value, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_dataset(self, uri: str, context: str) -> None:
        """The prepared dataset at `uri` as an MLflow dataset input ("training" or
        "evaluation" `context`); MLflow links it once: a resumed run adds none."""
        from pipeline.tracking_context import dataset_input

        self.client.log_inputs(self.run_id, datasets=[dataset_input(uri, context)])

    def system_metrics(self):
        """A context manager: MLflow's system metrics of this machine
        (`system/...`) logged to the run while its block runs."""
        from pipeline.tracking_context import system_metrics

        return system_metrics(self.run_id, self.uri)

    def log_model(self, net, name: str, *, step: int = 0, registered_model_name: str | None = None):
        """Log `net` (a `vgg.VGG`) as an MLflow model from code
        (pipeline/mlflow_vgg_model.py): the `vgg` package, the net's JSON
        arguments and safetensors weights, nothing pickled. `step` links the
        model to the metrics of that step (the epoch it was saved at)."""
        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        from pipeline import mlflow_vgg_model
        from vgg.weights import save_net

        client(self.uri)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, net.num_classes))]),
        )
        with (
            tempfile.TemporaryDirectory(prefix="vggpipe-model-") as folder,
            warnings.catch_warnings(),
        ):
            # The signature is given; an input example would make MLflow load and
            # run the model while logging it, seconds per model for nothing.
            warnings.filterwarnings("ignore", message=".*(type hints|input example)")
            # MLflow stores the artifact under its folder's name: "net".
            net_folder = save_net(net, Path(folder) / mlflow_vgg_model.NET_ARTIFACT)
            with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
                return mlflow.pyfunc.log_model(
                    name=name,
                    python_model=mlflow_vgg_model.__file__,
                    artifacts={mlflow_vgg_model.NET_ARTIFACT: str(net_folder)},
                    code_paths=[str(Path(vgg.__file__).parent)],
                    signature=signature,
                    registered_model_name=registered_model_name,
                    pip_requirements=model_requirements(),
                    step=step,
                )

    def download_artifacts(self, path: str, destination: str) -> str:
        """The run's artifact (file or folder) `path`, copied under `destination`."""
        client(self.uri)
        return mlflow.artifacts.download_artifacts(
            run_id=self.run_id, artifact_path=path, dst_path=destination
        )

    def read_artifact_text(self, path: str) -> str:
        with tempfile.TemporaryDirectory(prefix="vggpipe-artifact-") as destination:
            return Path(self.download_artifacts(path, destination)).read_text()


def start_run(
    name: str,
    experiment: str,
    *,
    uri: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    config: Any = None,
) -> Run:
    """The run called `name` of this stage kind (`tags[STAGE_TAG]`): the
    existing one, set running again, or a new one. A stage `config`'s params
    (`config.flat_params()`) are checked against an existing run's
    fingerprinted ones before anything is written (a refused command leaves
    that run as it was), then logged."""
    params = config.flat_params() if config is not None else {}
    uri = tracking_uri(uri)
    mlflow_client = client(uri)
    stage = (tags or {}).get(STAGE_TAG)
    existing = find_run(name, experiment, uri, stage=stage, parent_run_id=parent_run_id)
    logged: Mapping[str, str] = {}
    if existing is not None:
        logged = existing.data.params
        if config is not None:
            refuse_other_settings(existing, config)
        mlflow_client.update_run(existing.info.run_id, status="RUNNING")
        run = Run(existing.info.run_id, uri)
        # A workflow's stage run keeps its kind (an ensemble is evaluated by the evaluation code).
        tags = {
            k: v
            for k, v in (tags or {}).items()
            if k != STAGE_TAG or STAGE_TAG not in existing.data.tags
        }
    else:
        from pipeline.tracking_context import context_tags

        # What mlflow.start_run would tag (user, source, git commit); a nested run its parent's.
        parent = get_run_or_none(parent_run_id, uri) if parent_run_id else None
        all_tags = context_tags(parent and parent.data.tags) | {
            RUN_NAME_TAG: name,
            "mlflow.runName": name,
        }
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run_id = mlflow_client.create_run(
            experiment_id(experiment, uri), tags=all_tags, run_name=name
        ).info.run_id
        run = Run(run_id, uri)
    run.set_tags(tags or {})
    # MLflow refuses a param logged again with another value: a resumed run logs only
    # what it lacks, and unfingerprinted ones (hardware, paths) keep their first value.
    run.log_params({k: v for k, v in params.items() if k not in logged})
    return run


def refuse_other_settings(existing, config: Any) -> None:
    """ConfigError when the MLflow run `existing` (or None) logged other values
    of `config`'s fingerprinted params (the settings that change its result)."""
    if existing is None:
        return
    changed = config.changed_params(existing.data.params)
    if changed:
        raise ConfigError(
            f"run {existing.info.run_id} was started with other settings: "
            + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            + "; give the run another name"
        )


def get_run(run_id: str, uri: str | None = None):
    return client(uri).get_run(run_id)


# ---------------------------------------------------------------------------
# The model registry, for evaluation


def registered_model_version(reference: str, uri: str | None = None):
    """The registry's ModelVersion that `reference` names ("models:/name/version",
    "models:/name@alias" or "name/version"), or None when it names no registered
    model in this store. Its `run_id` is the run that logged the model."""
    from mlflow.exceptions import MlflowException

    name = reference.removeprefix("models:/")
    mlflow_client = client(uri)
    try:
        if "@" in name:
            model, alias = name.rsplit("@", 1)
            return mlflow_client.get_model_version_by_alias(model, alias)
        model, slash, version = name.rpartition("/")
        if not slash or not version.isdigit():
            return None
        return mlflow_client.get_model_version(model, version)
    except MlflowException:
        return None


def load_logged_net(model_uri: str, uri: str | None = None):
    """The `vgg.VGG` net of a model `Run.log_model` logged ("models:/name/3",
    "models:/name@alias", "runs:/<run id>/best_model"), on the CPU. Only its
    JSON arguments and safetensors weights are read: nothing the store holds is
    unpickled or run (unlike `mlflow.pyfunc.load_model`, which runs the
    model's code file)."""
    from mlflow.exceptions import MlflowException

    from pipeline import mlflow_vgg_model
    from vgg.weights import load_net

    client(uri)
    # The weights are read into memory: the download need not outlive the call.
    with tempfile.TemporaryDirectory(prefix="vggpipe-model-") as destination:
        try:
            download = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=destination
            )
        except MlflowException as error:  # a path the run does not hold, a store's refusal
            raise NotFoundError(f"{model_uri}: {error.message}") from error
        # A fixed place inside the download, not one the model's MLmodel file names.
        net_folder = Path(download) / "artifacts" / mlflow_vgg_model.NET_ARTIFACT
        if not net_folder.is_dir():
            raise ConfigError(
                f"{model_uri} is not a model vggpipe logged (no artifacts/net folder)"
            )
        try:
            return load_net(net_folder)
        except ValueError as error:
            raise ConfigError(f"{model_uri}: {error}") from error


def get_run_or_none(run_id: str, uri: str | None = None):
    """The run `run_id`, or None when this store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        return None


# ---------------------------------------------------------------------------
# Nested runs and registering models


def child_runs(parent_run_id: str, uri: str | None = None) -> list:
    """The runs nested under `parent_run_id` (MLflow's parent tag), oldest first."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs, page_token = [], None
    while True:
        page = mlflow_client.search_runs(
            [experiment],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def register_model(
    run_id: str,
    artifact_path: str,
    name: str,
    *,
    alias: str | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
):
    """The version of registered model `name` (created if missing) holding the
    model `run_id` last logged as `artifact_path`: registered once, found again
    when registered before (a rerun adds no version); `alias` is moved to it."""
    mlflow_client = client(uri)
    # MLflow 3 keeps logged models apart from run artifacts: register the
    # logged model itself (models:/<id>) rather than a runs:/ path.
    logged = mlflow_client.search_logged_models(
        [mlflow_client.get_run(run_id).info.experiment_id],
        filter_string=f"name = '{artifact_path}' AND source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
    )
    if not logged:
        raise ValueError(f"run {run_id} logged no model named {artifact_path!r}")
    source = f"models:/{logged[0].model_id}"
    versions = mlflow_client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    version = next((v for v in versions if v.source == source), None) or mlflow.register_model(
        source, name, tags={key: str(value) for key, value in (tags or {}).items()}
    )
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
    return version
