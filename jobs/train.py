"""Ray job entrypoint: `emotiw train` (see `emotiw train --help`)."""

import sys

from emotiw.cli.commands import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
