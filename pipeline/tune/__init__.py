"""The sweep stage: Ray Tune over training runs, ASHA, the model registry.

`config` holds `TuneConfig`; `driver` runs (and resumes) the sweep; `asha` is
the early-stopping scheduler that survives a resume; `results` summarises the
trials, registers the champion and writes the trials table and plot.

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "tune": "driver",
    "EPOCHS_DONE": "asha",
    "summary_lines": "results",
    "TrialSummary": "results",
    "TuneResult": "results",
    "VAL_METRIC": "results",
    "BEST_TAG": "results",
    "OUTCOME_TAG": "results",
    "FINISHED": "results",
    "STOPPED_EARLY": "results",
    "FAILED": "results",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
