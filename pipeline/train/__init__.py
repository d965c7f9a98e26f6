"""The training stage: the paper's recipe as a Ray Train (V2) data-parallel run.

`config` holds `TrainConfig`; `loop` is what every worker runs, top to bottom;
`driver` checks the inputs, opens the MLflow run, fits and logs the models.

The names below load on first use (lazy_loader, as SciPy and scikit-image do),
so importing the package (or its `config`) stays light: no torch, Ray or MLflow
until a stage runs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "driver": ["train", "summary_lines", "TrainResult"],
    },
)
