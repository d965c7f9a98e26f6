"""The preprocessing stage: ILSVRC-2012 to sharded Arrow files with Ray tasks.

`config` holds `PreprocessConfig`; `plan` lists the source, fixes which image
goes to which shard and finds what a rerun reuses; `image` processes one image
and `shard` writes one shard (the body of a shard task); `run` drives it all:
the shard tasks, the colour statistics, the manifest and the summary.

The names below load on first use, so importing the package (or its
`config`) stays light: no torch, Ray or MLflow until a stage runs.
"""

from importlib import import_module

_LAZY = {
    "preprocess": "run",
    "run_preprocess": "run",
    "PreprocessSummary": "run",
    "PreprocessConfig": "config",
    "make_plan": "plan",
    "ImageRejected": "image",
    "ProcessedImage": "image",
    "process_image": "image",
    "resize": "image",
    "shrunk_size": "image",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
