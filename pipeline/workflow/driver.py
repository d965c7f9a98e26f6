"""The paper's whole recipe as one graph of stages: `pipeline.run(recipe)`.

`plan` turns a `WorkflowConfig` into stages: preprocess (shards and pixel
statistics), train net A at the base S, the deeper nets from A (and any from
random weights), each scale config at the large S from its base-S net and
jittered from that, evaluate every net, evaluate the ensemble, and the combined
tables. `run` executes the graph on Ray: every stage is a Ray task, launched as
soon as the stages it needs have finished and the cluster has the resources its
training or evaluation asks for, so independent stages (the deeper nets, the
evaluations) run at the same time where they fit.

MLflow is the record of what finished, and the only one: the workflow is a
parent run, every stage a run nested under it (a training stage's run is the
training run itself). Each stage has a fingerprint: a digest of its settings
and of the fingerprints of the stages it needs. A stage whose fingerprint is
tagged on a finished run (with its outputs logged) is not run again, so running
the same command again reuses what finished and, after a crash, resumes: an
unfinished training run continues from its last checkpoint because its run
name (stage name plus fingerprint) is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import ConfigError, apply_overrides, flat_params, train_scale_label
from pipeline.evaluation.config import EvaluateConfig
from pipeline.recipes import recipe, workflow_recipe
from pipeline.shards import ShardStore, canonical_uri
from pipeline.train.config import TrainConfig
from pipeline.workflow.config import WorkflowConfig

WORKFLOW_STAGE = "workflow"
FINGERPRINT_TAG = "vggpipe.workflow.fingerprint"
STAGE_KEY_TAG = "vggpipe.workflow.stage"
# Set last, after the outputs are logged: a run with it is a finished stage.
DONE_TAG = "vggpipe.workflow.done"
OUTPUTS_FILE = "workflow/outputs.json"
HEARTBEAT_SECONDS = 60.0  # how often a long stage's progress is printed

# Fields that do not change what a net learns: a rerun on other hardware, or
# with the run wired to another parent, is the same stage.
UNFINGERPRINTED_TRAIN_FIELDS = (
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "data_cpus_per_task",
    "decode_on",
    "channels_last",
    "compile",
    "keep_checkpoints",
    "max_failures",
    "run_name",
    "storage_path",
    "experiment",
    "tracking_uri",
    "parent_run_id",
    "data",
    "init_from",
    "resume_from",
    "recipe",
)
UNFINGERPRINTED_EVALUATE_FIELDS = (
    "batch_size",
    "dense_batch_size",
    "workers",
    "use_gpu",
    "cpus_per_worker",
    "data_cpus_per_task",
    "output",
    "run_name",
    "experiment",
    "tracking_uri",
    "parent_run_id",
    "models",
    "data",
)


# ---------------------------------------------------------------------------
# The graph


@dataclass(frozen=True)
class Net:
    """One trained net of the graph."""

    key: str  # "D-256", "D-384", "D-256-512", "D-256-random"
    config: str  # Table 1 column
    scale: tuple[int, int]  # (Smin, Smax)
    start: str | None  # the net it starts from; None: random weights
    start_mode: str | None  # "init_from" (net A's layers) or "resume_from" (all layers)
    phase: str  # "base", "large" or "jitter": which epochs and recipe stage apply

    @property
    def initialised_from(self) -> str:
        return self.start or "random"


@dataclass(frozen=True)
class Stage:
    """One node of the graph; `spec` is everything the stage needs to run."""

    key: str  # "preprocess", "train/D-256", "evaluate/D-256", "ensemble", "tables"
    kind: str  # "preprocess", "train", "evaluate", "ensemble" or "tables"
    needs: tuple[str, ...]  # keys of the stages whose outputs it takes
    spec: dict[str, Any]
    fingerprint: str = ""

    @property
    def run_name(self) -> str:
        """Its MLflow run (and Ray Train run) name: stable for the same settings,
        so a crashed stage resumes under it; new for new settings."""
        return f"{self.key.replace('/', '-')}-{self.fingerprint[:8]}"


def _scale_key(scale: tuple[int, int]) -> str:
    low, high = scale
    return str(low) if low == high else f"{low}-{high}"


def nets(config: WorkflowConfig) -> list[Net]:
    """The nets of the graph, each after the one it starts from."""
    base = (config.base_scale, config.base_scale)
    a_key = f"A-{_scale_key(base)}"
    graph = [Net(a_key, "A", base, None, None, "base")]
    for name in config.random_init:
        suffix = "-random" if name in config.from_a or name == "A" else ""
        if name == "A":
            continue  # net A is always trained from random weights
        graph.append(Net(f"{name}-{_scale_key(base)}{suffix}", name, base, None, None, "base"))
    for name in config.from_a:
        graph.append(Net(f"{name}-{_scale_key(base)}", name, base, a_key, "init_from", "base"))
    if config.large_scale is not None:
        large = (config.large_scale, config.large_scale)
        for name in config.scale_configs:
            start = f"{name}-{_scale_key(base)}"
            graph.append(
                Net(f"{name}-{_scale_key(large)}", name, large, start, "resume_from", "large")
            )
            if config.jitter is not None:
                graph.append(
                    Net(
                        f"{name}-{_scale_key(config.jitter)}",
                        name,
                        config.jitter,
                        f"{name}-{_scale_key(large)}",
                        "resume_from",
                        "jitter",
                    )
                )
    return graph


def train_config(config: WorkflowConfig, net: Net) -> TrainConfig:
    """The training config of `net`, before the workflow wires in data, start
    point, run name and storage."""
    stage = {"base": "256", "large": "384", "jitter": "jitter"}[net.phase]
    if config.train_recipe == "paper":
        base = recipe(f"paper-{net.config.lower()}-{stage}")
    else:
        base = recipe(config.train_recipe)
        if net.phase != "base":
            # Fine-tuning from a trained net: a tenth of the lr (section 3.1).
            base = dataclasses.replace(base, lr=base.lr / 10)
    low, high = net.scale
    epochs = config.base_epochs if net.phase == "base" else config.finetune_epochs
    base = dataclasses.replace(
        base,
        config=net.config,
        scale_min=low,
        scale_max=high,
        test_scale=None,
        epochs=epochs or base.epochs,
    )
    return apply_overrides(base, list(config.train_overrides))


def _evaluate_settings(config: WorkflowConfig, **fields: Any) -> dict[str, Any]:
    """EvaluateConfig fields of an evaluation stage (validated: a bad override
    fails in plan, before any stage runs)."""
    settings = EvaluateConfig(
        models=("planned",) * 2,  # stand-ins: the nets are known once trained
        protocols=config.protocols,
        scales=config.scales,
        scale_step=config.scale_step,
        **fields,
    )
    settings = apply_overrides(settings, list(config.eval_overrides))
    return settings.to_dict()


def _is_prepared(data: str) -> bool:
    try:
        return ShardStore(data).has_manifest()
    except (OSError, ValueError):
        return False


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint_view(stage: Stage) -> dict[str, Any]:
    spec = dict(stage.spec)
    if stage.kind == "train":
        spec["config"] = {
            k: v for k, v in spec["config"].items() if k not in UNFINGERPRINTED_TRAIN_FIELDS
        }
    elif stage.kind in ("evaluate", "ensemble"):
        spec["settings"] = {
            k: v for k, v in spec["settings"].items() if k not in UNFINGERPRINTED_EVALUATE_FIELDS
        }
    return {"kind": stage.kind, "spec": spec}


def plan(config: WorkflowConfig) -> list[Stage]:
    """The stages of `config`'s graph in an order where every stage comes after
    those it needs, with their fingerprints. Fails on a bad setting before any
    work starts."""
    if not config.data:
        raise ConfigError("data must name ILSVRC-2012 (folders or tars) or a prepared dataset")
    data = canonical_uri(config.data)
    if _is_prepared(data):
        prepare = {"prepared": data, "manifest_sha256": ShardStore(data).manifest_sha256()}
    else:
        if "://" not in data and not os.path.exists(data):
            raise FileNotFoundError(f"data {config.data!r} does not exist")
        prepare = {
            "source": data,
            "max_short_side": config.max_short_side,
            "shard_rows": config.shard_rows,
            "stats_images": config.stats_images,
        }
    stages = [Stage("preprocess", "preprocess", (), prepare)]

    graph = nets(config)
    keys = {net.key for net in graph}
    for net in graph:
        train = train_config(config, net)
        needs = ("preprocess",) + ((f"train/{net.start}",) if net.start else ())
        spec = {
            "net": dataclasses.asdict(net),
            "config": train.to_dict(),
        }
        stages.append(Stage(f"train/{net.key}", "train", needs, spec))
    for net in graph:
        settings = _evaluate_settings(config)
        stages.append(
            Stage(
                f"evaluate/{net.key}",
                "evaluate",
                ("preprocess", f"train/{net.key}"),
                {"nets": [net.key], "settings": settings},
            )
        )
    evaluations = [f"evaluate/{net.key}" for net in graph]
    if config.ensemble:
        missing = [key for key in config.ensemble if key not in keys]
        if missing:
            raise ConfigError(
                f"ensemble names nets not in the graph: {', '.join(missing)}; "
                f"the nets are {', '.join(sorted(keys))}"
            )
        settings = _evaluate_settings(config, ensemble=True)
        stages.append(
            Stage(
                "ensemble",
                "ensemble",
                ("preprocess", *(f"train/{key}" for key in config.ensemble)),
                {"nets": list(config.ensemble), "settings": settings},
            )
        )
        evaluations.append("ensemble")
    net_info = {
        net.key: {
            "config": net.config,
            "train_scale": train_scale_label(net.scale),
            "initialised_from": net.initialised_from,
        }
        for net in graph
    }
    stages.append(Stage("tables", "tables", tuple(evaluations), {"nets": net_info}))

    fingerprints: dict[str, str] = {}
    planned = []
    for stage in stages:
        digest = _digest(
            {"stage": _fingerprint_view(stage), "needs": [fingerprints[n] for n in stage.needs]}
        )
        fingerprints[stage.key] = digest
        planned.append(dataclasses.replace(stage, fingerprint=digest))
    return planned


# ---------------------------------------------------------------------------
# The stages, as they run inside their Ray task


@dataclass(frozen=True)
class StageContext:
    """Where a stage writes: the same for every stage of one workflow run."""

    work_dir: str  # absolute path or URI
    tracking_uri: str
    experiment: str
    parent_run_id: str


def _run_preprocess(stage: Stage, run_id: str, inputs: Mapping, context: StageContext) -> dict:
    from pipeline.preprocess.run import preprocess

    spec = stage.spec
    if "prepared" in spec:
        return {"data": spec["prepared"], "manifest_sha256": spec["manifest_sha256"]}
    output = f"{context.work_dir}/shards-{stage.fingerprint[:8]}"
    summary = preprocess(
        spec["source"],
        output,
        max_short_side=spec["max_short_side"],
        shard_rows=spec["shard_rows"],
        stats_images=spec["stats_images"],
        progress=False,
    )
    store = ShardStore(output)
    manifest = store.manifest()
    tracking.log_metrics(
        run_id,
        {
            **{f"{split}_images": info.rows for split, info in manifest.splits.items()},
            "rejected_images": len(manifest.rejected),
            "seconds": summary.seconds,
        },
        step=0,
        uri=context.tracking_uri,
    )
    tracking.log_text(run_id, summary.report(), "preprocess/summary.txt", context.tracking_uri)
    return {"data": output, "manifest_sha256": store.manifest_sha256()}


def _run_train(stage: Stage, run_id: str, inputs: Mapping, context: StageContext) -> dict:
    from pipeline.train.driver import train

    net = Net(**{**stage.spec["net"], "scale": tuple(stage.spec["net"]["scale"])})
    start = {}
    if net.start:
        start[net.start_mode] = inputs[f"train/{net.start}"]["run_id"]
    config = TrainConfig.from_dict(
        {
            **stage.spec["config"],
            "data": inputs["preprocess"]["data"],
            "run_name": stage.run_name,
            "parent_run_id": context.parent_run_id,
            "storage_path": f"{context.work_dir}/checkpoints",
            "experiment": context.experiment,
            "tracking_uri": context.tracking_uri,
            **start,
        }
    )
    result = train(config)
    return {
        "run_id": result.run_id,
        "epochs": result.epochs_run,
        "val_top1_error": result.metrics.get("val_top1_error"),
    }


def _run_evaluate(stage: Stage, run_id: str, inputs: Mapping, context: StageContext) -> dict:
    from pipeline.evaluation.driver import run_evaluation

    if "://" in context.work_dir:
        output = tempfile.mkdtemp(prefix="vggpipe-evaluation-")  # the tables go to MLflow too
    else:
        output = f"{context.work_dir}/evaluations/{stage.run_name}"
    models = [inputs[f"train/{key}"]["run_id"] for key in stage.spec["nets"]]
    config = EvaluateConfig.from_dict(
        {
            **stage.spec["settings"],
            "models": models,
            "data": inputs["preprocess"]["data"],
            "output": output,
            "run_name": stage.run_name,
            "experiment": context.experiment,
            "tracking_uri": context.tracking_uri,
            "parent_run_id": context.parent_run_id,
        }
    )
    result = run_evaluation(config, progress=False)
    net_of_run = dict(zip(models, stage.spec["nets"], strict=True))
    rows = []
    for row in result.rows:
        values = dataclasses.asdict(row)
        # The table names nets by their place in the graph, not by run name.
        values["net"] = net_of_run.get(row.run_id) if row.run_id else "ensemble"
        values["members"] = stage.spec["nets"]
        rows.append(values)
    return {"run_id": result.evaluation_run_id, "rows": rows}


def _run_tables(stage: Stage, run_id: str, inputs: Mapping, context: StageContext) -> dict:
    markdown = combined_tables(stage.spec["nets"], inputs)
    tracking.log_text(run_id, markdown, "tables.md", context.tracking_uri)
    tracking.log_text(context.parent_run_id, markdown, "tables.md", context.tracking_uri)
    if "://" not in context.work_dir:
        path = Path(context.work_dir) / "tables.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown)
    return {"markdown": markdown}


STAGE_FUNCTIONS: dict[str, Callable[[Stage, str, Mapping, StageContext], dict]] = {
    "preprocess": _run_preprocess,
    "train": _run_train,
    "evaluate": _run_evaluate,
    "ensemble": _run_evaluate,
    "tables": _run_tables,
}


def execute_stage(stage: Stage, run_id: str, inputs: Mapping, context: StageContext) -> dict:
    """What each stage's Ray task runs: the stage's function, its outputs returned."""
    return STAGE_FUNCTIONS[stage.kind](stage, run_id, inputs, context)


# ---------------------------------------------------------------------------
# The paper-style tables


def _percent(value: float) -> str:
    return f"{value:.2f}"


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    return "\n".join(out)


def combined_tables(net_info: Mapping[str, Mapping], inputs: Mapping[str, Mapping]) -> str:
    """The paper's tables 3-6 over the workflow's nets: single test scale,
    several test scales, dense against multi-crop, the ensemble. Errors in %."""
    rows = [row for outputs in inputs.values() for row in outputs["rows"]]
    per_net = [row for row in rows if row["net"] != "ensemble" and len(row["members"]) == 1]
    protocols = list(dict.fromkeys(row["protocol"] for row in per_net))
    main = "dense" if "dense" in protocols else (protocols[0] if protocols else "")
    order = {key: i for i, key in enumerate(net_info)}

    def net_columns(key: str) -> list[str]:
        info = net_info[key]
        return [key, info["config"], info["initialised_from"], info["train_scale"]]

    sections = []
    for scale_set, title in (
        ("single", "Single test scale (Table 3): Q = S, or the middle of [Smin; Smax]"),
        ("multi", "Several test scales, posteriors averaged (Table 4)"),
    ):
        chosen = sorted(
            (r for r in per_net if r["scale_set"] == scale_set and r["protocol"] == main),
            key=lambda r: order[r["net"]],
        )
        if chosen:
            sections.append(
                f"### {title}; {main} evaluation\n\n"
                + _markdown(
                    ["net", "config", "initialised from", "train S", "test Q", "top-1", "top-5"],
                    [
                        net_columns(r["net"])
                        + [r["test_scales"], _percent(r["top1_error"]), _percent(r["top5_error"])]
                        for r in chosen
                    ],
                )
            )
    if len(protocols) > 1:
        # The paper compares protocols at its best (multi-scale) setting.
        widest = "multi" if any(r["scale_set"] == "multi" for r in per_net) else "single"
        chosen = sorted(
            (r for r in per_net if r["scale_set"] == widest),
            key=lambda r: (order[r["net"]], protocols.index(r["protocol"])),
        )
        sections.append(
            f"### Dense against multi-crop evaluation (Table 5); {widest} test scale(s)\n\n"
            + _markdown(
                ["net", "config", "train S", "test Q", "protocol", "top-1", "top-5"],
                [
                    [r["net"], net_info[r["net"]]["config"], net_info[r["net"]]["train_scale"]]
                    + [
                        r["test_scales"],
                        r["protocol"],
                        _percent(r["top1_error"]),
                        _percent(r["top5_error"]),
                    ]
                    for r in chosen
                ],
            )
        )
    ensemble = [row for row in rows if len(row["members"]) > 1]
    widest = "multi" if any(r["scale_set"] == "multi" for r in ensemble) else "single"
    ensemble = [row for row in ensemble if row["scale_set"] == widest]
    if ensemble:
        sections.append(
            f"### Ensemble: posteriors of the nets averaged (Table 6); {widest} test scale(s)\n\n"
            + _markdown(
                ["nets", "train S", "test Q", "protocol", "top-1", "top-5"],
                [
                    [
                        r["net"] if r["net"] != "ensemble" else " + ".join(r["members"]),
                        r["train_scale"],
                        r["test_scales"],
                        r["protocol"],
                        _percent(r["top1_error"]),
                        _percent(r["top5_error"]),
                    ]
                    for r in ensemble
                ],
            )
        )
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------
# The driver


@dataclass
class StageOutcome:
    key: str
    status: str  # "ran", "reused", "failed", "blocked" (a stage it needs failed)
    run_id: str | None = None
    seconds: float = 0.0
    error: str | None = None


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

    @property
    def failed(self) -> list[StageOutcome]:
        return [s for s in self.stages if s.status in ("failed", "blocked")]

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.stages)


def workflow_name(config: WorkflowConfig) -> str:
    if config.run_name:
        return config.run_name
    settings = {k: v for k, v in config.to_dict().items() if k not in ("tracking_uri", "run_name")}
    return f"{config.recipe}-{_digest(settings)[:8]}"


def finished_stage(stage: Stage, experiment: str, uri: str):
    """The finished run of a stage with this fingerprint (any workflow's), or None."""
    found = tracking.client(uri).search_runs(
        [tracking.experiment_id(experiment, uri)],
        filter_string=f"tags.`{DONE_TAG}` = '{stage.fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def _stage_resources(stage: Stage, cluster: Mapping[str, float]) -> dict[str, float]:
    """What the stage's Ray work holds at once, for deciding what runs together."""
    if stage.kind == "preprocess":
        return {"CPU": cluster.get("CPU", 1.0)}  # it fans out over every CPU
    if stage.kind == "train":
        c = stage.spec["config"]
        needs = {"CPU": c["num_workers"] * c["cpus_per_worker"] + c["data_cpus_per_task"]}
        return needs | ({"GPU": float(c["num_workers"])} if c["use_gpu"] else {})
    if stage.kind in ("evaluate", "ensemble"):
        s = stage.spec["settings"]
        gpus = cluster.get("GPU", 0.0)
        use_gpu = s["use_gpu"] if s["use_gpu"] is not None else gpus > 0
        workers = s["workers"] or (max(1, int(gpus)) if use_gpu else 1)
        needs = {"CPU": workers * s["cpus_per_worker"] + s["data_cpus_per_task"]}
        return needs | ({"GPU": float(workers)} if use_gpu else {})
    return {}


def _fits(needs: Mapping[str, float], used: Mapping[str, float], total: Mapping[str, float]):
    return all(used.get(k, 0.0) + v <= total.get(k, 0.0) + 1e-9 for k, v in needs.items())


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _outputs_of(run, uri: str) -> dict:
    path = tracking.download_artifacts(run.info.run_id, OUTPUTS_FILE, uri)
    return json.loads(Path(path).read_text())


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
    stages = plan(config)
    uri = tracking.tracking_uri(config.tracking_uri)
    work_dir = canonical_uri(config.work_dir)
    name = workflow_name(config)
    parent = tracking.start_run(
        name,
        config.experiment,
        uri=uri,
        tags={tracking.STAGE_TAG: WORKFLOW_STAGE, tracking.RECIPE_TAG: config.recipe},
    )
    outcomes: dict[str, StageOutcome] = {}
    outputs: dict[str, dict] = {}
    try:
        tracking.log_params(parent, flat_params(config), uri)
        tracking.log_text(parent, config.to_json(), "workflow/config.json", uri)
        tracking.log_dict(
            parent,
            [{"key": s.key, "needs": list(s.needs), "fingerprint": s.fingerprint} for s in stages],
            "workflow/graph.json",
            uri,
        )
        context = StageContext(work_dir, uri, config.experiment, parent)
        _execute(stages, context, outcomes, outputs, echo, address)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tracking.end_run(parent, status, uri)
        raise
    result = WorkflowResult(
        name=name,
        parent_run_id=parent,
        tracking_uri=uri,
        experiment_id=tracking.experiment_id(config.experiment, uri),
        stages=[outcomes[s.key] for s in stages],
        tables=outputs.get("tables", {}).get("markdown", ""),
        seconds=time.perf_counter() - started,
        outputs=outputs,
    )
    tracking.log_metrics(
        parent,
        {
            "stages_run": result.count("ran"),
            "stages_reused": result.count("reused"),
            "stages_failed": len(result.failed),
            "seconds": result.seconds,
        },
        step=0,
        uri=uri,
    )
    tracking.end_run(parent, "FAILED" if result.failed else "FINISHED", uri)
    return result


def _execute(
    stages: list[Stage],
    context: StageContext,
    outcomes: dict[str, StageOutcome],
    outputs: dict[str, dict],
    echo: Callable[[str], None],
    address: str | None = None,
) -> None:
    """Launch every stage whose inputs are ready and whose resources fit; reuse
    finished ones; record each outcome. Ctrl-C cancels the running stages."""
    import ray

    uri = context.tracking_uri
    remote_stage = ray.remote(num_cpus=0, max_retries=0)(execute_stage)
    total: dict[str, float] = {}

    def cluster() -> dict[str, float]:
        # Ray starts with the first stage to run: a rerun that reuses every
        # stage never waits for it.
        if not total:
            if not ray.is_initialized():
                ray.init(address=address, log_to_driver=False)
            total.update(ray.cluster_resources())
        return total

    pending = list(stages)
    looked_up: set[str] = set()  # stages already searched for in MLflow
    running: dict[Any, tuple[Stage, str, float, dict[str, float]]] = {}
    used: dict[str, float] = {}
    last_heartbeat = time.monotonic()
    try:
        while pending or running:
            launched = True
            while launched:  # a reused stage can make others ready at once
                launched = False
                for stage in list(pending):
                    if any(
                        outcomes.get(n) and outcomes[n].status in ("failed", "blocked")
                        for n in stage.needs
                    ):
                        outcomes[stage.key] = StageOutcome(stage.key, "blocked")
                        pending.remove(stage)
                        echo(f"  blocked  {stage.key}: a stage it needs failed")
                        launched = True
                        continue
                    if any(n not in outputs for n in stage.needs):
                        continue
                    # Asked once, when its inputs are ready: a stage waiting for
                    # resources is not searched for again every few seconds.
                    finished = None
                    if stage.key not in looked_up:
                        looked_up.add(stage.key)
                        finished = finished_stage(stage, context.experiment, uri)
                    if finished is not None:
                        outputs[stage.key] = _outputs_of(finished, uri)
                        outcomes[stage.key] = StageOutcome(
                            stage.key, "reused", finished.info.run_id
                        )
                        pending.remove(stage)
                        echo(f"  reused   {stage.key} (finished run {finished.info.run_id})")
                        launched = True
                        continue
                    needs = _stage_resources(stage, cluster())
                    if running and not _fits(needs, used, cluster()):
                        continue
                    run_id = tracking.start_run(
                        stage.run_name,
                        context.experiment,
                        uri=uri,
                        parent_run_id=context.parent_run_id,
                        tags={
                            tracking.STAGE_TAG: stage.kind,
                            STAGE_KEY_TAG: stage.key,
                            FINGERPRINT_TAG: stage.fingerprint,
                        },
                    )
                    inputs = {n: outputs[n] for n in stage.needs}
                    ref = remote_stage.remote(stage, run_id, inputs, context)
                    running[ref] = (stage, run_id, time.monotonic(), needs)
                    for k, v in needs.items():
                        used[k] = used.get(k, 0.0) + v
                    pending.remove(stage)
                    echo(f"  started  {stage.key} (run {run_id})")
                    launched = True
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
            for ref in ready:
                stage, run_id, began, needs = running.pop(ref)
                for k, v in needs.items():
                    used[k] -= v
                seconds = time.monotonic() - began
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the stage's error, reported and recorded
                    tracking.end_run(run_id, "FAILED", uri)
                    reason = str(getattr(exc, "cause", None) or exc).strip().splitlines()
                    outcomes[stage.key] = StageOutcome(
                        stage.key, "failed", run_id, seconds, reason[-1] if reason else repr(exc)
                    )
                    echo(
                        f"  FAILED   {stage.key} after {_clock(seconds)}: {outcomes[stage.key].error}"
                    )
                    continue
                tracking.log_dict(run_id, result, OUTPUTS_FILE, uri)
                tracking.set_tags(run_id, {DONE_TAG: stage.fingerprint}, uri)
                tracking.end_run(run_id, "FINISHED", uri)
                outputs[stage.key] = result
                outcomes[stage.key] = StageOutcome(stage.key, "ran", run_id, seconds)
                echo(f"  finished {stage.key} in {_clock(seconds)}{_result_note(result)}")
            if time.monotonic() - last_heartbeat >= HEARTBEAT_SECONDS:
                last_heartbeat = time.monotonic()
                for stage, run_id, began, _ in running.values():
                    echo(
                        f"  running  {stage.key} for {_clock(time.monotonic() - began)}{_progress(stage, run_id, uri)}"
                    )
    except BaseException:
        for ref, (_, run_id, _, _) in running.items():
            ray.cancel(ref, force=True)
            tracking.end_run(run_id, "KILLED", uri)
        raise


def _result_note(result: Mapping) -> str:
    error = result.get("val_top1_error")
    return f": val top-1 error {100 * error:.2f}%" if isinstance(error, float) else ""


def _progress(stage: Stage, run_id: str, uri: str) -> str:
    if stage.kind != "train":
        return ""
    metrics = tracking.get_run(run_id, uri).data.metrics
    if "epoch" not in metrics:
        return ""
    epochs = stage.spec["config"]["epochs"]
    note = f": epoch {int(metrics['epoch']) + 1} of at most {epochs}"
    if "val_top1_error" in metrics:
        note += f", val top-1 error {100 * metrics['val_top1_error']:.2f}%"
    return note


def summary_lines(result: WorkflowResult) -> list[str]:
    lines = [
        f"Workflow {result.name}: {result.count('ran')} stage(s) run, "
        f"{result.count('reused')} reused from finished runs, {len(result.failed)} failed, "
        f"in {_clock(result.seconds)} (MLflow parent run {result.parent_run_id}).",
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
    "Net",
    "Stage",
    "StageOutcome",
    "WorkflowResult",
    "combined_tables",
    "execute_stage",
    "finished_stage",
    "nets",
    "plan",
    "run",
    "summary_lines",
    "train_config",
]
