"""The VGG paper at scale: each pipeline stage is a package with one plain function.

    from pipeline.preprocess import preprocess
    from pipeline.train import train
    from pipeline.evaluation import evaluate
    from pipeline.tune import tune
    from pipeline.workflow import run

`import pipeline` is light: it loads neither torch nor Ray nor MLflow, and each
stage package loads its own heavy imports only when its function is first
looked up, so `vggpipe --help` and a config error answer at once.
"""

import os

# MLflow's usage telemetry fetches its settings in a background thread; with no
# internet (many GPU clusters, and these machines) that thread deletes an
# environment variable while another thread's HTTP request may be iterating
# os.environ, and the MLflow call fails with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'
# (seen in this project's test run). Off unless the user set it themselves.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow 3.17 unpickles a model's files on load unless told not to, and a
# pickle runs whatever code it names: a model swapped in a store would run on
# the machine that loads it. This project logs nothing that needs it (nets are
# safetensors, models are logged from code). Off unless the user set it.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
