"""The evaluation stage: the paper's test protocols (PAPER.md section 3) as Ray tasks.

    config   what is evaluated, how, where (EvaluateConfig)
    nets     any MODEL reference as an architecture and its weights
    plan     the table's rows and the (net, Q, view) posteriors they need
    worker   a Ray task's share of the images through every net and view
    results  the table: rows, Markdown, CSV, JSON, predictions
    driver   `evaluate`, `run_evaluation`, and the MLflow logging

The names below load on first use (lazy_loader, as SciPy and scikit-image do),
so importing the package (or its `config`) stays light: no torch, Ray or MLflow
until a stage runs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "driver": ["evaluate", "run_evaluation"],
        "nets": ["load_model", "EvaluatedModel"],
        "results": ["EvaluationResult", "TableRow"],
    },
)
