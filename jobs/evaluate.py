"""Ray job entrypoint: `emotiw evaluate` (see `emotiw evaluate --help`)."""

import sys

from emotiw.cli.commands import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
