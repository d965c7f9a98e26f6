"""`ray job submit --working-dir . -- python -m jobs.evaluate MODEL [MODEL ...] [options]`:
the evaluation stage as a Ray job (same arguments as `vggpipe evaluate`)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
