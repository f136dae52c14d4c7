"""`python -m worker.cli`: the `styledrop` command (the supervisor starts workers this way)."""

import sys

from worker.cli.commands import main

sys.exit(main())
