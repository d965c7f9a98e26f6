"""The VGG paper at scale: each pipeline stage is a plain function.

`pipeline.preprocess`, `pipeline.train`, `pipeline.evaluate` and
`pipeline.tune` each name both a module and the function it exports;
`pipeline.run` is the whole recipe (`pipeline.workflow.run`). The functions are bound here eagerly, after the modules
are imported, so that `from pipeline import preprocess` always gives the
function. `train` brings torch and Ray Data with it (about two seconds); the
others load theirs only when a stage runs.
"""

from pipeline.evaluate import evaluate
from pipeline.preprocess import preprocess
from pipeline.train import train
from pipeline.tune import tune
from pipeline.workflow import run

__all__ = ["evaluate", "preprocess", "run", "train", "tune"]
