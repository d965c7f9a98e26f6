"""Runs a planned graph of stages on Ray, with MLflow as the record of what finished.

The scheduler finds the stages whose inputs are ready, reuses a finished run
with the same fingerprint instead of running a stage again, launches the rest
as Ray tasks as the cluster's resources allow, collects their outputs, prints a
heartbeat for the long ones and, on Ctrl-C or a crash of the driver, cancels
what is running. What a stage does is the stage's business (`stages.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import tracking
from pipeline.workflow.stages import Inputs, Resources, Stage, StageContext

FINGERPRINT_TAG = "vggpipe.workflow.fingerprint"
STAGE_KEY_TAG = "vggpipe.workflow.stage"
# Set last, after the outputs are logged: a run with it is a finished stage.
DONE_TAG = "vggpipe.workflow.done"
OUTPUTS_FILE = "workflow/outputs.json"
HEARTBEAT_SECONDS = 60.0  # how often a long stage's progress is printed
WAIT_SECONDS = 5.0  # longest wait for a stage to finish before the heartbeat is due again


@dataclass
class StageOutcome:
    key: str
    status: str  # "ran", "reused", "failed", "blocked" (a stage it needs failed)
    run_id: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Launched:
    """A stage running as a Ray task."""

    stage: Stage
    run: tracking.Run
    began: float  # time.monotonic()
    holds: Resources


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def fits(needs: Mapping[str, float], used: Mapping[str, float], total: Mapping[str, float]) -> bool:
    return all(used.get(k, 0.0) + v <= total.get(k, 0.0) + 1e-9 for k, v in needs.items())


def finished_stage(stage: Stage, experiment: str, uri: str):
    """The finished run of a stage with this fingerprint (any workflow's), or None."""
    found = tracking.client(uri).search_runs(
        [tracking.experiment_id(experiment, uri)],
        filter_string=f"tags.`{DONE_TAG}` = '{stage.fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def run_stage(stage: Stage, mlflow_run: tracking.Run, inputs: Inputs, context: StageContext):
    """The body of each stage's Ray task."""
    return stage.run(mlflow_run, inputs, context)


def _result_note(result: Mapping) -> str:
    error = result.get("val_top1_error")
    return f": val top-1 error {100 * error:.2f}%" if isinstance(error, float) else ""


def _reason(exc: BaseException) -> str:
    """The last line of the stage's own error, not of Ray's wrapping of it."""
    lines = str(getattr(exc, "cause", None) or exc).strip().splitlines()
    return lines[-1] if lines else repr(exc)


class Scheduler:
    """One pass of a workflow over its planned `stages`; `outcomes` and
    `outputs` (by stage key) are what it found, ran or could not run."""

    def __init__(
        self,
        stages: Sequence[Stage],
        context: StageContext,
        echo: Callable[[str], None],
        address: str | None = None,
    ) -> None:
        self.context = context
        self.echo = echo
        self.address = address
        self.pending = list(stages)
        self.outcomes: dict[str, StageOutcome] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.running: dict[Any, Launched] = {}  # by Ray object ref
        self.used: Resources = {}
        self.looked_up: set[str] = set()  # stages already searched for in MLflow
        self.total: Resources = {}
        self.remote_stage = None
        self.last_heartbeat = time.monotonic()

    def run(self) -> None:
        """Until every stage ran, was reused or could not run. Stage failures
        are outcomes; an interrupt cancels the running stages and is raised."""
        try:
            while True:
                self.launch_ready()
                if not self.running:
                    break
                self.collect()
                self.heartbeat()
        except BaseException:
            self.cancel()
            raise

    def launch_ready(self) -> None:
        """Settle every pending stage that can be settled now, again while any
        was: a reused or blocked stage can make others ready at once."""
        settled = True
        while settled:
            settled = False
            for stage in list(self.pending):
                if self.settle(stage):
                    self.pending.remove(stage)
                    settled = True

    def settle(self, stage: Stage) -> bool:
        """Block, reuse or launch `stage` if its time has come; False if it waits."""
        if self.blocked(stage):
            self.outcomes[stage.key] = StageOutcome(stage.key, "blocked")
            self.echo(f"  blocked  {stage.key}: a stage it needs failed")
            return True
        if not all(n in self.outputs for n in stage.needs):
            return False
        return self.reuse(stage) or self.launch(stage)

    def blocked(self, stage: Stage) -> bool:
        """Whether a stage that `stage` needs failed or was blocked."""
        return any(
            n in self.outcomes and self.outcomes[n].status in ("failed", "blocked")
            for n in stage.needs
        )

    def reuse(self, stage: Stage) -> bool:
        # Asked once, when its inputs are ready: a stage waiting for resources
        # is not searched for again every few seconds.
        if stage.key in self.looked_up:
            return False
        self.looked_up.add(stage.key)
        uri = self.context.tracking_uri
        finished = finished_stage(stage, self.context.experiment, uri)
        if finished is None:
            return False
        run_id = finished.info.run_id
        outputs = tracking.Run(run_id, uri).read_artifact_text(OUTPUTS_FILE)
        self.outputs[stage.key] = json.loads(outputs)
        self.outcomes[stage.key] = StageOutcome(stage.key, "reused", run_id)
        self.echo(f"  reused   {stage.key} (finished run {run_id})")
        return True

    def cluster(self) -> Resources:
        # Ray starts with the first stage to run: a rerun that reuses every
        # stage never waits for it.
        if not self.total:
            import ray

            from pipeline import cluster

            cluster.connect(self.address)
            self.total.update(ray.cluster_resources())
            self.remote_stage = ray.remote(num_cpus=0, max_retries=0)(run_stage)
        return self.total

    def launch(self, stage: Stage) -> bool:
        """Start `stage` as a Ray task if its resources fit beside the running
        ones (the first always starts: it may need the whole cluster)."""
        holds = stage.resources(self.cluster())
        if self.running and not fits(holds, self.used, self.total):
            return False
        mlflow_run = tracking.start_run(
            stage.run_name,
            self.context.experiment,
            uri=self.context.tracking_uri,
            parent_run_id=self.context.parent.run_id,
            tags={
                tracking.STAGE_TAG: stage.kind,
                STAGE_KEY_TAG: stage.key,
                FINGERPRINT_TAG: stage.fingerprint,
            },
        )
        inputs = {n: self.outputs[n] for n in stage.needs}
        ref = self.remote_stage.remote(stage, mlflow_run, inputs, self.context)
        self.running[ref] = Launched(stage, mlflow_run, time.monotonic(), holds)
        for name, amount in holds.items():
            self.used[name] = self.used.get(name, 0.0) + amount
        self.echo(f"  started  {stage.key} (run {mlflow_run.run_id})")
        return True

    def collect(self) -> None:
        """Record the stages that finished within WAIT_SECONDS, if any."""
        import ray

        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=WAIT_SECONDS)
        for ref in ready:
            launched = self.running.pop(ref)
            for name, amount in launched.holds.items():
                self.used[name] -= amount
            try:
                result = ray.get(ref)
            except Exception as exc:  # the stage's error, reported and recorded
                self.failed(launched, exc)
            else:
                self.finished(launched, result)

    def failed(self, launched: Launched, exc: Exception) -> None:
        key, seconds = launched.stage.key, time.monotonic() - launched.began
        launched.run.end("FAILED")
        outcome = StageOutcome(key, "failed", launched.run.run_id, seconds, _reason(exc))
        self.outcomes[key] = outcome
        self.echo(f"  FAILED   {key} after {clock(seconds)}: {outcome.error}")

    def finished(self, launched: Launched, result: dict[str, Any]) -> None:
        key, seconds = launched.stage.key, time.monotonic() - launched.began
        launched.run.log_dict(result, OUTPUTS_FILE)
        launched.run.set_tags({DONE_TAG: launched.stage.fingerprint})
        launched.run.end("FINISHED")
        self.outputs[key] = result
        self.outcomes[key] = StageOutcome(key, "ran", launched.run.run_id, seconds)
        self.echo(f"  finished {key} in {clock(seconds)}{_result_note(result)}")

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_heartbeat < HEARTBEAT_SECONDS:
            return
        self.last_heartbeat = now
        for launched in self.running.values():
            note = launched.stage.progress(launched.run)
            self.echo(f"  running  {launched.stage.key} for {clock(now - launched.began)}{note}")

    def cancel(self) -> None:
        if not self.running:
            return
        import ray

        for ref, launched in self.running.items():
            ray.cancel(ref, force=True)
            launched.run.end("KILLED")


__all__ = [
    "DONE_TAG",
    "FINGERPRINT_TAG",
    "OUTPUTS_FILE",
    "STAGE_KEY_TAG",
    "Scheduler",
    "StageOutcome",
    "clock",
    "finished_stage",
    "fits",
]
