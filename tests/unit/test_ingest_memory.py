"""A decoding read task's memory pattern: steps of crops held together until a
block fills, then freed together. Without `keep_freed_heap` glibc hands the
freed pages back and every block faults them in (and the kernel zeroes them)
anew; with it the next block reuses them."""

import subprocess
import sys

import pytest

_BLOCKS = """
import resource
import numpy as np
from pipeline.shard_datasource import keep_freed_heap
def block():  # 12 steps of 64 crops of 224 x 224 x 3, about 116 MB
    steps = [np.empty((64, 224, 224, 3), np.uint8) for _ in range(12)]
    for step in steps:
        step.fill(1)
def faults():  # over 5 blocks, after a first one that faults its pages in either way
    block()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
default = faults()
tuned = keep_freed_heap()
print(default, tuned, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_freed_heap_reuses_a_freed_block_instead_of_faulting_it_again():
    out = subprocess.run(
        [sys.executable, "-c", _BLOCKS], capture_output=True, text=True, check=True
    ).stdout.split()
    default, tuned, with_setting = int(out[0]), out[1], int(out[2])
    assert tuned == "True"
    # Default: at least one fault per 2 MB huge page of each block (many more
    # with 4 KB pages). Tuned: the pages stay mapped, a handful of faults in all.
    assert default >= 5 * 50
    assert with_setting * 20 < default
