"""`python -m metadg` = the `metadg` command."""

import sys

from metadg.cli import main

sys.exit(main())
