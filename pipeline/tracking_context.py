"""What MLflow's fluent API records about a run and `MlflowClient.create_run`
does not, in MLflow's own conventions: the context tags (`mlflow.user`,
`mlflow.source.*`, the git commit), the prepared dataset as a dataset input,
and system metrics. `pipeline.tracking` calls these; nothing else needs to.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.data.dataset import Dataset
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_USER

from pipeline.shards import ShardStore

# MLflow keeps at most 36 characters of a dataset digest (MAX_DATASET_DIGEST_SIZE):
# the manifest's sha256 is cut to that, and is whole in the profile.
DIGEST_LENGTH = 36
TRAINING, EVALUATION = "training", "evaluation"  # MLflow's dataset contexts
# Seconds between system metric samples (MLflow's default; its
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL variable overrides it).
SYSTEM_METRICS_INTERVAL_S = 10.0


def _is_context_tag(key: str) -> bool:
    return key == MLFLOW_USER or key.startswith("mlflow.source.")


@functools.cache
def _own_context_tags() -> tuple[tuple[str, str], ...]:
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    # MLflow's git context looks at the main file; `vggpipe` is a script in a
    # virtual environment, so the checkout asked is that of the code running.
    code = str(Path(__file__).parent)
    tags = resolve_tags(ignore=[GitRunContext])
    for key, read in (
        (MLFLOW_GIT_COMMIT, git_utils.get_git_commit),
        (MLFLOW_GIT_BRANCH, git_utils.get_git_branch),
        (MLFLOW_GIT_REPO_URL, git_utils.get_git_repo_url),
    ):
        if value := read(code):  # no git repository: no git tags
            tags[key] = value
    return tuple(sorted(tags.items()))


def context_tags(parent_tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags `mlflow.start_run` would resolve for a new run: user, source
    name and type, git commit, branch and repository. A nested run takes its
    parent's: a workflow's or sweep's stage runs in a Ray task, whose main file
    is Ray's worker, not the command the user ran."""
    inherited = {k: v for k, v in (parent_tags or {}).items() if _is_context_tag(k)}
    return inherited or dict(_own_context_tags())


class PreparedDataset(Dataset):
    """A prepared dataset (the preprocess output) as MLflow records it: its
    folder's name and URI, the manifest's sha256 as the digest, and a profile
    read from the manifest. Only the metadata is logged; the shards stay where
    they are."""

    def __init__(self, uri: str, store: ShardStore | None = None):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        store = store or ShardStore(uri)
        manifest = store.manifest()
        self._sha256 = store.manifest_sha256()
        self._profile = {
            "manifest_sha256": self._sha256,
            "images": {split: info.rows for split, info in manifest.splits.items()},
            "classes": len(manifest.classes),
            "rejected_images": len(manifest.rejected),
            "source": manifest.source.get("uri"),
            **manifest.params,
        }
        with warnings.catch_warnings():  # a local path reads as two kinds of local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        super().__init__(source, name=uri.rstrip("/").rsplit("/", 1)[-1] or uri)

    def _compute_digest(self) -> str:
        return self._sha256[:DIGEST_LENGTH]

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    @property
    def schema(self) -> None:
        return None

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def dataset_input(uri: str, context: str):
    """An `mlflow.entities.DatasetInput` of the prepared dataset at `uri`,
    tagged with MLflow's dataset context ("training" or "evaluation")."""
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(
        PreparedDataset(uri)._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    )


@contextmanager
def system_metrics(run_id: str, uri: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml)
    logged to the run as `system/...` while the block runs, on the step axis
    MLflow gives them (one step per sample, continued when a run resumes).
    The samples of the last, unfinished interval are logged too: MLflow's
    monitor drops them, which loses a short run's only figures."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=SYSTEM_METRICS_INTERVAL_S,
        resume_logging=True,
        tracking_uri=uri,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        try:
            if tail := monitor.aggregate_metrics():
                monitor.publish_metrics(tail)
                monitor.mlflow_logger.flush()
        except Exception as error:  # the record is best effort; the training is not
            warnings.warn(f"system metrics: last sample not logged: {error}", stacklevel=2)


__all__ = [
    "EVALUATION",
    "TRAINING",
    "PreparedDataset",
    "context_tags",
    "dataset_input",
    "system_metrics",
]
