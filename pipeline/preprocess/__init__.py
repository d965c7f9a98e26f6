"""The preprocessing stage: ILSVRC-2012 to sharded Arrow files with Ray tasks.

`config` holds `PreprocessConfig`; `plan` lists the source, fixes which image
goes to which shard and finds what a rerun reuses; `image` processes one image
and `shard` writes one shard (the body of a shard task); `run` drives it all:
the shard tasks, the colour statistics, the manifest and the summary.

The names below load on first use (lazy_loader, as SciPy and scikit-image do),
so importing the package (or its `config`) stays light: no torch, Ray or MLflow
until a stage runs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "run": ["preprocess", "run_preprocess", "PreprocessSummary"],
        "config": ["PreprocessConfig"],
        "plan": ["make_plan"],
        "image": ["ImageRejected", "ProcessedImage", "process_image", "resize", "shrunk_size"],
    },
)
