"""`ray job submit --working-dir . -- python -m jobs.tune --recipe NAME [--set k=v ...]`:
the tuning stage as a Ray job (same arguments as `vggpipe tune`)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
