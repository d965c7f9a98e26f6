"""The paper's whole recipe as one graph of stages: `pipeline.workflow.run(recipe)`.

`plan` turns a `WorkflowConfig` into stages (`stages.py`): preprocess (shards
and pixel statistics), train net A at the base S, the deeper nets from A (and
any from random weights), each scale config at the large S from its base-S net
and jittered from that, evaluate every net, evaluate the ensemble, and the
combined tables. `run` executes the graph on Ray (`scheduler.py`): every stage
is a Ray task, launched as soon as the stages it needs have finished and the
cluster has the resources its training or evaluation asks for, so independent
stages (the deeper nets, the evaluations) run at the same time where they fit.

MLflow is the record of what finished, and the only one: the workflow is a
parent run, every stage a run nested under it (a training stage's run is the
training run itself). Each stage has a fingerprint: a digest of the settings
that change its outputs (the fields its stage config marks as fingerprinted)
and of the fingerprints of the stages it needs. A stage whose fingerprint is
tagged on a finished run (with its outputs logged) is not run again, so running
the same command again reuses what finished and, after a crash, resumes: an
unfinished training run continues from its last checkpoint because its run
name (stage name plus fingerprint) is the same.

Each finished net's best model is registered as `vgg-<config>` (vgg-D ...)
under an alias naming the workflow and the net (`register_nets`), so
`models:/vgg-D@<workflow>-D-256` loads the net that workflow trained.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import tracking
from pipeline.config import ConfigError, settings_digest
from pipeline.errors import NotFoundError
from pipeline.preprocess.config import PreprocessConfig
from pipeline.recipes import workflow_recipe
from pipeline.shards import ShardStore, canonical_uri, require_folder
from pipeline.train.config import BEST_MODEL
from pipeline.workflow.config import WorkflowConfig
from pipeline.workflow.graph import evaluate_settings, nets, train_config
from pipeline.workflow.scheduler import Scheduler, StageOutcome, clock
from pipeline.workflow.stages import (
    EnsembleStage,
    EvaluateStage,
    PreprocessStage,
    Stage,
    StageContext,
    TablesStage,
    TrainStage,
)

WORKFLOW_STAGE = "workflow"


def _is_prepared(data: str) -> bool:
    try:
        return ShardStore(data).has_manifest()
    except (OSError, ValueError):
        return False


def _preprocess_stage(config: WorkflowConfig) -> PreprocessStage:
    if not config.data:
        raise ConfigError("data must name ILSVRC-2012 (folders or tars) or a prepared dataset")
    data = canonical_uri(config.data)
    shaping = PreprocessConfig(
        max_short_side=config.max_short_side,
        shard_rows=config.shard_rows,
        stats_images=config.stats_images,
    )
    if _is_prepared(data):
        manifest_sha256 = ShardStore(data).manifest_sha256()
        return PreprocessStage(data=data, manifest_sha256=manifest_sha256, config=shaping)
    if "://" not in data and not os.path.exists(data):
        raise NotFoundError(f"data {config.data!r} does not exist")
    return PreprocessStage(data=data, manifest_sha256=None, config=shaping)


def plan(config: WorkflowConfig) -> list[Stage]:
    """The stages of `config`'s graph in an order where every stage comes after
    those it needs, with their fingerprints. Fails on a bad setting before any
    work starts."""
    stages: list[Stage] = [_preprocess_stage(config)]
    graph = nets(config)
    stages += [TrainStage(net=net, config=train_config(config, net)) for net in graph]
    settings = evaluate_settings(config)
    evaluations: list[Stage] = [EvaluateStage(net=net.key, settings=settings) for net in graph]
    if config.ensemble:
        keys = {net.key for net in graph}
        missing = [key for key in config.ensemble if key not in keys]
        if missing:
            raise ConfigError(
                f"ensemble names nets not in the graph: {', '.join(missing)}; "
                f"the nets are {', '.join(sorted(keys))}"
            )
        settings = evaluate_settings(config, ensemble=True)
        evaluations.append(EnsembleStage(nets=config.ensemble, settings=settings))
    stages += evaluations
    stages.append(TablesStage(nets=tuple(graph), evaluations=tuple(s.key for s in evaluations)))

    fingerprints: dict[str, str] = {}
    planned = []
    for stage in stages:
        fingerprint = settings_digest(
            {
                "kind": stage.kind,
                "stage": stage.fingerprint_view(),
                "needs": [fingerprints[n] for n in stage.needs],
            }
        )
        fingerprints[stage.key] = fingerprint
        planned.append(dataclasses.replace(stage, fingerprint=fingerprint))
    return planned


def workflow_name(config: WorkflowConfig) -> str:
    """The parent run's name: as configured, else the recipe and a digest of
    the settings that change the results, so the same command finds it again."""
    if config.run_name:
        return config.run_name
    return f"{config.recipe}-{settings_digest(config.fingerprint_dict())[:8]}"


@dataclass
class WorkflowResult:
    """What `run` returns: each stage's outcome and the tables."""

    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    stages: list[StageOutcome]
    tables: str
    seconds: float
    outputs: dict[str, dict] = field(default_factory=dict)
    # net key -> "models:/vgg-<config>@<alias> (version n)"
    registered: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[StageOutcome]:
        return [s for s in self.stages if s.status in ("failed", "blocked")]

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.stages)


def _print_now(line: str) -> None:
    print(line, flush=True)  # a job's log is a pipe: unflushed lines would come hours late


def run(
    config: WorkflowConfig | str,
    *,
    address: str | None = None,
    overrides: list[str] | None = None,
    echo: Callable[[str], None] = _print_now,
) -> WorkflowResult:
    """Run (or resume) the workflow `config` describes, or the named recipe with
    `key=value` overrides; see the module docstring. Stage failures do not stop
    the stages that do not need them; they are reported in the result."""
    if isinstance(config, str):
        config = workflow_recipe(config, overrides)
    started = time.perf_counter()
    require_folder(config.work_dir, "work_dir")
    stages = plan(config)
    uri = tracking.tracking_uri(config.tracking_uri)
    name = workflow_name(config)
    parent = tracking.start_run(
        name,
        config.experiment,
        uri=uri,
        tags={tracking.STAGE_TAG: WORKFLOW_STAGE, tracking.RECIPE_TAG: config.recipe},
        config=config,  # refused before anything is written when the settings differ
    )
    try:
        parent.log_text(config.to_json(), "workflow/config.json")
        parent.log_dict(
            [{"key": s.key, "needs": list(s.needs), "fingerprint": s.fingerprint} for s in stages],
            "workflow/graph.json",
        )
        context = StageContext(canonical_uri(config.work_dir), config.experiment, parent)
        scheduler = Scheduler(stages, context, echo, address)
        scheduler.run()
        registered = register_nets(stages, scheduler.outputs, name, uri)
        for key, version in registered.items():
            echo(f"  registered {key} as {version}")
    except BaseException as exc:
        parent.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    result = WorkflowResult(
        name=name,
        parent_run_id=parent.run_id,
        tracking_uri=uri,
        experiment_id=tracking.experiment_id(config.experiment, uri),
        stages=[scheduler.outcomes[s.key] for s in stages],
        tables=scheduler.outputs.get("tables", {}).get("markdown", ""),
        seconds=time.perf_counter() - started,
        outputs=scheduler.outputs,
        registered=registered,
    )
    parent.log_metrics(
        {
            "stages_run": result.count("ran"),
            "stages_reused": result.count("reused"),
            "stages_failed": len(result.failed),
            "seconds": result.seconds,
        },
        step=parent.next_step("stages_run"),  # one step per time the workflow is run
    )
    parent.end("FAILED" if result.failed else "FINISHED")
    return result


def net_alias(workflow: str, net: str) -> str:
    """The registry alias of workflow `workflow`'s net `net` (its graph key):
    both names, in the letters, digits, '_' and '-' that aliases allow. A
    workflow trains several nets of one config, so the net is in it too."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{workflow}-{net}")[:255]


def register_nets(stages: list[Stage], outputs: dict, workflow: str, uri: str) -> dict[str, str]:
    """Each finished net's best model as a version of `vgg-<config>` (e.g.
    vgg-D), with the alias `net_alias` gives: registered once, so a workflow
    run again (or one that reuses the net) adds no version, only its alias."""
    registered = {}
    for stage in stages:
        if not isinstance(stage, TrainStage) or stage.key not in outputs:
            continue
        name, alias = f"vgg-{stage.config.config}", net_alias(workflow, stage.net.key)
        version = tracking.register_model(
            outputs[stage.key]["run_id"],
            BEST_MODEL,
            name,
            alias=alias,
            tags={"vggpipe.workflow": workflow, "vggpipe.net": stage.net.key},
            uri=uri,
        )
        registered[stage.net.key] = f"models:/{name}@{alias} (version {version.version})"
    return registered


def summary_lines(result: WorkflowResult) -> list[str]:
    lines = [
        f"Workflow {result.name}: {result.count('ran')} stage(s) run, "
        f"{result.count('reused')} reused from finished runs, {len(result.failed)} failed, "
        f"in {clock(result.seconds)} (MLflow parent run {result.parent_run_id}).",
    ]
    for outcome in result.failed:
        lines.append(
            f"  {outcome.status} {outcome.key}: {outcome.error or 'see the stage it needs'}"
        )
    if result.tables:
        lines += ["", result.tables.rstrip()]
    lines.append("")
    page = f"#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
    if result.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"The runs: {result.tracking_uri.rstrip('/')}/{page}")
    else:
        # The last line is the command, as a user copies it: the venv's mlflow,
        # which a shell without the venv activated would not find by name.
        mlflow = Path(sys.executable).with_name("mlflow")
        lines.append(f"Open the runs in the MLflow UI (then http://127.0.0.1:5000/{page}):")
        lines.append(f"  {mlflow} ui --backend-store-uri {result.tracking_uri}")
    return lines


__all__ = [
    "WorkflowResult",
    "net_alias",
    "plan",
    "register_nets",
    "run",
    "summary_lines",
    "workflow_name",
]
