"""ASHA for sweeps that are killed and resumed: its clock is the epochs a
trial's training run has done (`EPOCHS_DONE`, added to every report by
`EpochsToTune`), not Tune's report count, and its rungs are rebuilt from the
results each restored trial saved.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

if TYPE_CHECKING:
    from pipeline.tune.config import TuneConfig

EPOCHS_DONE = "epochs_done"  # ASHA's clock: epochs trained so far (1 after the first)


class EpochsToTune(TuneReportCallback):
    """Ray's Train-to-Tune callback, adding EPOCHS_DONE to each report. ASHA
    keeps its clock on that rather than Tune's training_iteration, which starts
    again at 1 when an interrupted trial resumes its training run mid-way."""

    def after_report(self, run_context, metrics, checkpoint):
        metrics = [{**m, EPOCHS_DONE: int(m["epoch"]) + 1} for m in metrics]
        super().after_report(run_context, metrics, checkpoint)


class ResumableASHA(ASHAScheduler):
    """Ray's ASHA scheduler, made fit for resumed sweeps in two ways.

    Tune keeps the scheduler as first pickled and saves none of its state, so
    a resumed sweep would judge its remaining trials only against each other,
    and a resumed trial again at rungs it had passed: every trial added with
    results on storage (a restored one) replays them into its bracket.

    A resumed trial restarts from its latest checkpoint, which can be behind
    its latest report to Tune or ahead of a rung it never reported at; such a
    trial is judged at its next report, except at the last epoch (past max_t),
    which it always finishes so that train() logs its models."""

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._time_attr, 0) > self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        if not trial.has_reported_at_least_once:
            return  # a new trial (its folder is not even named yet)
        bracket = self._trial_info[trial.trial_id]
        try:
            with trial.storage.storage_filesystem.open_input_stream(
                f"{trial.path}/result.json"
            ) as stream:
                lines = stream.read().decode().splitlines()
        except OSError:  # FileNotFoundError included: nothing saved to replay
            return
        for line in lines:
            result = json.loads(line)
            if self._time_attr in result and self._metric in result:
                reward = self._metric_op * result[self._metric]
                bracket.on_result(trial, result[self._time_attr], reward)


def sweep_scheduler(config: TuneConfig) -> ResumableASHA:
    """ASHA on EPOCHS_DONE with rungs only before the last epoch (max_t =
    epochs - 1, and no stop at max_t), so that a trial ASHA keeps always ends
    inside train(): its models logged, its checkpoints tagged."""
    return ResumableASHA(
        time_attr=EPOCHS_DONE,
        max_t=config.train.epochs - 1,
        grace_period=config.grace_period,
        reduction_factor=config.reduction_factor,
        stop_last_trials=False,
    )


__all__ = ["EPOCHS_DONE", "EpochsToTune", "ResumableASHA", "sweep_scheduler"]
