"""`ray job submit --working-dir . -- python -m jobs.run --recipe NAME --data SOURCE [options]`:
the paper's whole recipe (preprocess, every net, every evaluation) as one Ray job
(same arguments as `vggpipe run`)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
