"""The VGG paper at scale: each pipeline stage is a plain function.

`pipeline.preprocess` names both a module and the function it exports. The
function is bound here eagerly, after the module is imported, so that
`from pipeline import preprocess` always gives the function; importing it is
light (numpy, pyarrow, Pillow: Ray and torch load only when a stage runs).
"""

from pipeline.preprocess import preprocess

__all__ = ["preprocess"]
