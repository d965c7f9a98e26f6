"""The VGG paper at scale: each pipeline stage is a plain function.

`pipeline.preprocess` and `pipeline.tune` each name both a module and the
function it exports. The functions are bound here eagerly, after the modules
are imported, so that `from pipeline import preprocess` always gives the
function; importing them is light (numpy, pyarrow, Pillow: Ray, torch and
MLflow load only when a stage runs).
"""

from pipeline.preprocess import preprocess
from pipeline.tune import tune

__all__ = ["preprocess", "tune"]
