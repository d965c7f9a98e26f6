"""The evaluation stage: the paper's test protocols (PAPER.md section 3) as Ray tasks.

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "evaluate": "driver",
    "run_evaluation": "driver",
    "load_model": "driver",
    "EvaluationResult": "driver",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
