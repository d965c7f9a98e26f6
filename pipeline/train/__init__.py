"""The training stage: the paper's recipe as a Ray Train (V2) data-parallel run.

`config` holds `TrainConfig`; `loop` is what every worker runs, top to bottom;
`driver` checks the inputs, opens the MLflow run, fits and logs the models.

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "train": "driver",
    "summary_lines": "driver",
    "TrainResult": "driver",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
