"""The sweep stage: Ray Tune over training runs, ASHA, the model registry.

`config` holds `TuneConfig`; `driver` runs (and resumes) the sweep; `asha` is
the early-stopping scheduler that survives a resume; `results` summarises the
trials, registers the champion and writes the trials table and plot.

The names below load on first use (lazy_loader, as SciPy and scikit-image do),
so importing the package (or its `config`) stays light: no torch, Ray or MLflow
until a stage runs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "driver": ["tune"],
        "asha": ["EPOCHS_DONE"],
        "results": [
            "summary_lines",
            "TrialSummary",
            "TuneResult",
            "VAL_METRIC",
            "BEST_TAG",
            "OUTCOME_TAG",
            "FINISHED",
            "STOPPED_EARLY",
            "FAILED",
        ],
    },
)
