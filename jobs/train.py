"""`ray job submit --working-dir . -- python -m jobs.train --recipe NAME [--set k=v ...]`:
the training stage as a Ray job (same arguments as `vggpipe train`)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
