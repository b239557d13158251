"""Ray job entrypoint: extract the feature table (see `emotiw extract --help`).

    ray job submit --working-dir . -- python jobs/extract.py --videos s3://b/clips \\
        --labels s3://b/Train_labels.txt --output s3://b/features/train
"""

import sys

from emotiw.cli.commands import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
