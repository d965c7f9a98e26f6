"""`ray job submit --working-dir . -- python -m jobs.preprocess SOURCE OUTPUT [options]`:
the preprocessing stage as a Ray job (same arguments as `vggpipe preprocess`)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
