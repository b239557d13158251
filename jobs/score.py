"""Ray job entrypoint: score clips into the scores table (see `emotiw score --help`).

    ray job submit --working-dir . -- python jobs/score.py --input s3://b/clips \\
        --output s3://b/scores --model models:/emotiw/3
"""

import sys

from emotiw.cli.commands import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
