"""`python -m gradwell` runs the command line (and lets torchrun start it)."""

import sys

from gradwell.cli import main

sys.exit(main())
