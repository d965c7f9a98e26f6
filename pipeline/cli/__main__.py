"""`python -m pipeline.cli ...`: the same as the `vggpipe` command."""

import sys

from pipeline.cli import main

sys.exit(main())
