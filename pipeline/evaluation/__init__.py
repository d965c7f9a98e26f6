"""The evaluation stage: the paper's test protocols (PAPER.md section 3) as Ray tasks.

    config   what is evaluated, how, where (EvaluateConfig)
    nets     any MODEL reference as an architecture and its weights
    plan     the table's rows and the (net, Q, view) posteriors they need
    worker   a Ray task's share of the images through every net and view
    results  the table: rows, Markdown, CSV, JSON, predictions
    driver   `evaluate`, `run_evaluation`, and the MLflow logging

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "evaluate": "driver",
    "run_evaluation": "driver",
    "load_model": "nets",
    "EvaluatedModel": "nets",
    "EvaluationResult": "results",
    "TableRow": "results",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
