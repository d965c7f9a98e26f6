"""The VGG paper at scale: each pipeline stage is a plain function.

`pipeline.preprocess`, `pipeline.train`, `pipeline.evaluate` and
`pipeline.tune` each name both a module and the function it exports;
`pipeline.run` is the whole recipe (`pipeline.workflow.run`). The functions are bound here eagerly, after the modules
are imported, so that `from pipeline import preprocess` always gives the
function. `train` brings torch and Ray Data with it (about two seconds); the
others load theirs only when a stage runs.
"""

import os

# MLflow's usage telemetry fetches its settings in a background thread; with no
# internet (many GPU clusters, and these machines) that thread deletes an
# environment variable while another thread's HTTP request may be iterating
# os.environ, and the MLflow call fails with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'
# (seen in this project's test run). Off unless the user set it themselves.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pipeline.evaluate import evaluate  # noqa: E402 (after the setting above)
from pipeline.preprocess import preprocess  # noqa: E402
from pipeline.train import train  # noqa: E402
from pipeline.tune import tune  # noqa: E402
from pipeline.workflow import run  # noqa: E402

__all__ = ["evaluate", "preprocess", "run", "train", "tune"]
