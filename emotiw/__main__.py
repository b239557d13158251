"""``python -m emotiw``: the same command line as the `emotiw` script."""

import sys

from emotiw.cli.commands import main

sys.exit(main())
