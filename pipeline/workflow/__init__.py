"""The paper's whole recipe as one graph of stages: `pipeline.workflow.run`.

`config` holds `WorkflowConfig`; `graph` plans the nets (which is trained from
which, with which recipe); `stages` has one class per stage kind (preprocess,
train, evaluate, ensemble, tables), each with its inputs, fingerprint,
resources and run; `scheduler` runs a planned graph on Ray, reusing what
MLflow records as finished; `tables` writes the paper's tables 3-6; `driver`
plans, runs and sums up.

The names below load on first use (lazy_loader, as SciPy and scikit-image do),
so importing the package (or its `config`) stays light: no torch, Ray or MLflow
until a stage runs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "driver": [
            "run",
            "plan",
            "summary_lines",
            "workflow_name",
            "WorkflowResult",
            "net_alias",
            "register_nets",
        ],
        "scheduler": ["StageOutcome", "finished_stage"],
        "graph": ["Net", "nets", "train_config"],
        "tables": ["combined_tables"],
    },
)
