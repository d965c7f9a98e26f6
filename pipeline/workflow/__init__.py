"""The paper's whole recipe as one graph of stages: `pipeline.workflow.run`.

`config` holds `WorkflowConfig`; `graph` plans the nets (which is trained from
which, with which recipe); `stages` has one class per stage kind (preprocess,
train, evaluate, ensemble, tables), each with its inputs, fingerprint,
resources and run; `scheduler` runs a planned graph on Ray, reusing what
MLflow records as finished; `tables` writes the paper's tables 3-6; `driver`
plans, runs and sums up.

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "run": "driver",
    "plan": "driver",
    "summary_lines": "driver",
    "workflow_name": "driver",
    "WorkflowResult": "driver",
    "StageOutcome": "scheduler",
    "finished_stage": "scheduler",
    "Net": "graph",
    "nets": "graph",
    "train_config": "graph",
    "combined_tables": "tables",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
