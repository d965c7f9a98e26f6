"""ASHA as the sweep builds it: rungs only before the last epoch, and rungs that
survive Tuner.restore by replaying each restored trial's saved results. Ray's
scheduler object only, driven by hand: no Ray instance."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
from ray.tune.schedulers import TrialScheduler

from pipeline.recipes import tune_recipe
from pipeline.tune.asha import EPOCHS_DONE, sweep_scheduler
from pipeline.tune.results import VAL_METRIC


def _scheduler(epochs: int = 3):
    """The scheduler the tune-smoke sweep builds (grace period 1, halving)."""
    scheduler = sweep_scheduler(tune_recipe("tune-smoke", [f"epochs={epochs}"]))
    scheduler.set_search_properties(VAL_METRIC, "min")
    return scheduler


def _trial(root: Path, trial_id: str, errors: list[float] = ()) -> SimpleNamespace:
    """A stand-in for Tune's Trial: an id and its folder on storage."""
    folder = root / trial_id
    folder.mkdir()
    if errors:
        lines = [json.dumps({EPOCHS_DONE: i + 1, VAL_METRIC: e}) for i, e in enumerate(errors)]
        (folder / "result.json").write_text("\n".join(lines) + "\n")
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem())
    return SimpleNamespace(
        trial_id=trial_id,
        path=str(folder),
        storage=storage,
        has_reported_at_least_once=bool(errors),
    )


def _report(scheduler, trial, epochs_done: int, error: float) -> str:
    return scheduler.on_trial_result(None, trial, {EPOCHS_DONE: epochs_done, VAL_METRIC: error})


def test_a_restored_sweep_judges_new_trials_against_the_rungs_of_earlier_ones(tmp_path):
    scheduler = _scheduler()
    scheduler.on_trial_add(None, _trial(tmp_path, "done", [0.5, 0.4, 0.35]))
    fresh = _trial(tmp_path, "fresh")
    scheduler.on_trial_add(None, fresh)
    # Worse than the restored trial at the first rung: stopped, as it would
    # have been had the sweep never been interrupted.
    assert _report(scheduler, fresh, 1, 0.9) == TrialScheduler.STOP


def test_without_the_replay_the_first_trial_after_a_restore_would_pass(tmp_path):
    scheduler = _scheduler()
    fresh = _trial(tmp_path, "fresh")
    scheduler.on_trial_add(None, fresh)
    assert _report(scheduler, fresh, 1, 0.9) == TrialScheduler.CONTINUE


def test_a_resumed_trial_is_not_judged_again_at_rungs_it_passed(tmp_path):
    scheduler = _scheduler(epochs=4)  # rungs after epochs 1 and 2
    scheduler.on_trial_add(None, _trial(tmp_path, "good", [0.3]))
    resumed = _trial(tmp_path, "resumed", [0.6, 0.5])  # passed both rungs before the kill
    scheduler.on_trial_add(None, resumed)
    assert _report(scheduler, resumed, 3, 0.45) == TrialScheduler.CONTINUE


def test_a_resumed_trial_past_a_rung_it_skipped_is_not_stopped_at_its_last_epoch(tmp_path):
    scheduler = _scheduler(epochs=3)  # rungs after epochs 1 and 2
    scheduler.on_trial_add(None, _trial(tmp_path, "good", [0.5, 0.3, 0.2]))
    # Killed after reporting epoch 1 but with epoch 2 checkpointed: resumed,
    # it next reports epoch 3, its last, past the rung at 2 it never reached.
    resumed = _trial(tmp_path, "resumed", [0.8])
    scheduler.on_trial_add(None, resumed)
    assert _report(scheduler, resumed, 3, 0.7) == TrialScheduler.CONTINUE


def test_a_resumed_trial_past_a_rung_it_skipped_is_judged_there_before_its_last_epoch(
    tmp_path,
):
    scheduler = _scheduler(epochs=4)  # rungs after epochs 1 and 2; 4 is the last
    scheduler.on_trial_add(None, _trial(tmp_path, "good", [0.5, 0.3]))
    resumed = _trial(tmp_path, "resumed", [0.8])
    scheduler.on_trial_add(None, resumed)
    assert _report(scheduler, resumed, 3, 0.7) == TrialScheduler.STOP


def test_no_rung_at_the_last_epoch_so_kept_trials_finish_inside_train(tmp_path):
    scheduler = _scheduler(epochs=3)
    best, worst = _trial(tmp_path, "best"), _trial(tmp_path, "worst")
    for trial in (best, worst):
        scheduler.on_trial_add(None, trial)
    assert _report(scheduler, best, 1, 0.2) == TrialScheduler.CONTINUE
    assert _report(scheduler, best, 2, 0.2) == TrialScheduler.CONTINUE
    assert _report(scheduler, best, 3, 0.2) == TrialScheduler.CONTINUE  # max_t: no stop
    assert _report(scheduler, worst, 1, 0.9) == TrialScheduler.STOP
