"""The workflow's stages, one class per kind: preprocess, train, evaluate,
ensemble, tables. Each owns its inputs (typed fields, set by
`pipeline.workflow.plan`), the stages it `needs`, the view of itself its
fingerprint digests, the cluster resources it holds while it runs, and its
`run`, the body of its Ray task.

A stage's inputs are the outputs of the stages it needs: plain dicts, logged
to MLflow as each stage finishes, so that a later workflow reuses them without
running the stage again. The stages cross into Ray tasks: plain picklable
dataclasses, and a `tracking.Run` handle for the stage's MLflow run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.evaluation.config import EvaluateConfig
from pipeline.preprocess.config import PreprocessConfig
from pipeline.train.config import TrainConfig
from pipeline.workflow.graph import Net
from pipeline.workflow.tables import combined_tables

if TYPE_CHECKING:
    from pipeline.tracking import Run

Inputs = Mapping[str, Mapping[str, Any]]  # the outputs of the stages it needs, by stage key
Resources = dict[str, float]  # Ray resource name -> amount, "CPU" and "GPU"


@dataclass(frozen=True)
class StageContext:
    """Where a stage writes: the same for every stage of one workflow run."""

    work_dir: str  # absolute path or URI
    experiment: str
    parent: Run  # the workflow's run, which every stage's run is nested under

    @property
    def tracking_uri(self) -> str:
        return self.parent.uri

    @property
    def local_work_dir(self) -> Path | None:
        """The work folder as a path (on a cluster, storage every node mounts at
        that name), or None when it is a URI such as s3://..."""
        return None if "://" in self.work_dir else Path(self.work_dir)


@dataclass(frozen=True)
class Stage:
    """One node of the workflow's graph. `fingerprint` digests the stage's
    settings and the fingerprints of the stages it needs (set by `plan`)."""

    kind: ClassVar[str]  # the MLflow stage tag
    fingerprint: str = dataclasses.field(default="", kw_only=True)

    @property
    def key(self) -> str:
        """Its name in the graph: "preprocess", "train/D-256", "ensemble", ..."""
        raise NotImplementedError

    @property
    def needs(self) -> tuple[str, ...]:
        """The keys of the stages whose outputs it takes."""
        return ()

    @property
    def run_name(self) -> str:
        """Its MLflow run (and Ray Train run) name: stable for the same settings,
        so a crashed stage resumes under it; new for new settings."""
        return f"{self.key.replace('/', '-')}-{self.fingerprint[:8]}"

    def fingerprint_view(self) -> dict[str, Any]:
        """The settings that change its outputs, as plain values."""
        raise NotImplementedError

    def resources(self, cluster: Mapping[str, float]) -> Resources:
        """What its Ray work holds at once, for deciding what runs beside it."""
        return {}

    def run(self, mlflow_run: Run, inputs: Inputs, context: StageContext) -> dict[str, Any]:
        """Do the stage's work (inside its Ray task); its outputs, JSON-able."""
        raise NotImplementedError

    def progress(self, mlflow_run: Run) -> str:
        """A note on how far it has got, for the driver's heartbeat."""
        return ""


@dataclass(frozen=True)
class PreprocessStage(Stage):
    """ILSVRC-2012 as users have it to shards and pixel statistics; a prepared
    dataset is taken as it is."""

    kind: ClassVar[str] = "preprocess"
    data: str  # the source, or a prepared dataset (canonical URI)
    # A prepared dataset's manifest digest: it is its fingerprint. None: prepare `data`.
    manifest_sha256: str | None
    config: PreprocessConfig

    @property
    def key(self) -> str:
        return "preprocess"

    @property
    def prepared(self) -> bool:
        return self.manifest_sha256 is not None

    def fingerprint_view(self) -> dict[str, Any]:
        if self.prepared:
            return {"prepared": self.data, "manifest_sha256": self.manifest_sha256}
        return {"source": self.data, **self.config.fingerprint_dict()}

    def resources(self, cluster: Mapping[str, float]) -> Resources:
        return {"CPU": cluster.get("CPU", 1.0)}  # it fans out over every CPU

    def run(self, mlflow_run: Run, inputs: Inputs, context: StageContext) -> dict[str, Any]:
        from pipeline.preprocess import run_preprocess
        from pipeline.shards import ShardStore

        if self.prepared:
            return {"data": self.data, "manifest_sha256": self.manifest_sha256}
        output = f"{context.work_dir}/shards-{self.fingerprint[:8]}"
        summary = run_preprocess(self.data, output, self.config, progress=False)
        store = ShardStore(output)
        manifest = store.manifest()
        mlflow_run.log_metrics_once(
            {
                **{f"{split}_images": info.rows for split, info in manifest.splits.items()},
                "rejected_images": len(manifest.rejected),
                "seconds": summary.seconds,
            },
            step=0,
        )
        mlflow_run.log_text(summary.report(), "preprocess/summary.txt")
        return {"data": output, "manifest_sha256": store.manifest_sha256()}


@dataclass(frozen=True)
class TrainStage(Stage):
    """One net trained with Ray Train. Its MLflow run is the training run
    itself, found again by its run name: a crashed stage continues from its
    last checkpoint."""

    kind: ClassVar[str] = "train"
    net: Net
    # Its recipe; the data, start net, run name and storage are wired in by `run`.
    config: TrainConfig

    @property
    def key(self) -> str:
        return f"train/{self.net.key}"

    @property
    def needs(self) -> tuple[str, ...]:
        return ("preprocess",) + ((f"train/{self.net.start}",) if self.net.start else ())

    def fingerprint_view(self) -> dict[str, Any]:
        return {"net": dataclasses.asdict(self.net), "config": self.config.fingerprint_dict()}

    def resources(self, cluster: Mapping[str, float]) -> Resources:
        c = self.config
        needs = {"CPU": c.num_workers * c.cpus_per_worker + c.data_cpus_per_task}
        return needs | ({"GPU": float(c.num_workers)} if c.use_gpu else {})

    def run(self, mlflow_run: Run, inputs: Inputs, context: StageContext) -> dict[str, Any]:
        from pipeline.train import train

        start = {}
        if self.net.start:
            start[self.net.start_mode] = inputs[f"train/{self.net.start}"]["run_id"]
        config = dataclasses.replace(
            self.config,
            data=inputs["preprocess"]["data"],
            run_name=self.run_name,
            parent_run_id=context.parent.run_id,
            storage_path=f"{context.work_dir}/checkpoints",
            experiment=context.experiment,
            tracking_uri=context.tracking_uri,
            **start,
        )
        result = train(config)
        return {
            "run_id": result.run_id,
            "epochs": result.epochs_run,
            "val_top1_error": result.metrics.get("val_top1_error"),
        }

    def progress(self, mlflow_run: Run) -> str:
        from pipeline.train.progress import latest, progress_note

        note = progress_note(latest(mlflow_run.get()), epochs=self.config.epochs)
        return f": {note}" if note else ""


@dataclass(frozen=True)
class _EvaluationStage(Stage):
    """The evaluation (`pipeline.evaluation`) of trained nets: what the
    evaluate and ensemble stages share."""

    # Its protocols, scales and hardware; the models and data are wired in by `run`.
    settings: EvaluateConfig

    @property
    def members(self) -> tuple[str, ...]:
        """The keys of the nets it evaluates."""
        raise NotImplementedError

    @property
    def needs(self) -> tuple[str, ...]:
        return ("preprocess", *(f"train/{key}" for key in self.members))

    def fingerprint_view(self) -> dict[str, Any]:
        return {"nets": list(self.members), "settings": self.settings.fingerprint_dict()}

    def resources(self, cluster: Mapping[str, float]) -> Resources:
        s = self.settings
        gpus = cluster.get("GPU", 0.0)
        use_gpu = s.use_gpu if s.use_gpu is not None else gpus > 0
        workers = s.workers or (max(1, int(gpus)) if use_gpu else 1)
        needs = {"CPU": workers * s.cpus_per_worker + s.data_cpus_per_task}
        return needs | ({"GPU": float(workers)} if use_gpu else {})

    def run(self, mlflow_run: Run, inputs: Inputs, context: StageContext) -> dict[str, Any]:
        from pipeline.evaluation import run_evaluation

        models = tuple(inputs[f"train/{key}"]["run_id"] for key in self.members)
        config = dataclasses.replace(
            self.settings,
            models=models,
            data=inputs["preprocess"]["data"],
            run_name=self.run_name,
            experiment=context.experiment,
            tracking_uri=context.tracking_uri,
            parent_run_id=context.parent.run_id,
        )
        if context.local_work_dir is None:
            # A work dir in object storage: the tables go to MLflow, which keeps them.
            with tempfile.TemporaryDirectory(prefix="vggpipe-evaluation-") as output:
                result = run_evaluation(dataclasses.replace(config, output=output), progress=False)
        else:
            output = str(context.local_work_dir / "evaluations" / self.run_name)
            result = run_evaluation(dataclasses.replace(config, output=output), progress=False)
        net_of_run = dict(zip(models, self.members, strict=True))
        rows = []
        for row in result.rows:
            values = dataclasses.asdict(row)
            # The tables name nets by their place in the graph, not by run name.
            values["net"] = net_of_run.get(row.run_id) if row.run_id else "ensemble"
            values["members"] = list(self.members)
            rows.append(values)
        return {"run_id": result.evaluation_run_id, "rows": rows}


@dataclass(frozen=True)
class EvaluateStage(_EvaluationStage):
    """One net at every protocol and test scale of the workflow."""

    kind: ClassVar[str] = "evaluate"
    net: str  # its key in the graph

    @property
    def key(self) -> str:
        return f"evaluate/{self.net}"

    @property
    def members(self) -> tuple[str, ...]:
        return (self.net,)


@dataclass(frozen=True)
class EnsembleStage(_EvaluationStage):
    """The nets' posteriors averaged (Table 6), beside each member alone."""

    kind: ClassVar[str] = "ensemble"
    nets: tuple[str, ...]  # their keys in the graph

    @property
    def key(self) -> str:
        return "ensemble"

    @property
    def members(self) -> tuple[str, ...]:
        return self.nets


@dataclass(frozen=True)
class TablesStage(Stage):
    """The paper's tables over every evaluation: logged on its own run and on
    the workflow's, and written to the work folder."""

    kind: ClassVar[str] = "tables"
    nets: tuple[Net, ...]  # every net of the graph, in the tables' order
    evaluations: tuple[str, ...]  # the keys of the evaluate and ensemble stages

    @property
    def key(self) -> str:
        return "tables"

    @property
    def needs(self) -> tuple[str, ...]:
        return self.evaluations

    def fingerprint_view(self) -> dict[str, Any]:
        return {"nets": [dataclasses.asdict(net) for net in self.nets]}

    def run(self, mlflow_run: Run, inputs: Inputs, context: StageContext) -> dict[str, Any]:
        markdown = combined_tables(self.nets, inputs)
        mlflow_run.log_text(markdown, "tables.md")
        context.parent.log_text(markdown, "tables.md")
        # In the work folder wherever it is: local, NFS or object storage.
        from pipeline.shards import resolve_filesystem

        filesystem, folder = resolve_filesystem(context.work_dir)
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(f"{folder}/tables.md") as stream:
            stream.write(markdown.encode())
        return {"markdown": markdown}


__all__ = [
    "EnsembleStage",
    "EvaluateStage",
    "PreprocessStage",
    "Stage",
    "StageContext",
    "TablesStage",
    "TrainStage",
]
