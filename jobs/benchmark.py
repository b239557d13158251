"""Benchmark entrypoint: ``python jobs/benchmark.py STAGE ...`` (see `benchmarks`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `benchmarks` package

from benchmarks.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
