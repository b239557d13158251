"""Benchmarks, one module per stage; each prints its figure as a ratio against a baseline
measured in the same run (these machines are shared and noisy: compare ratios, not times).

    python -m benchmarks decode [--corpus DIR] [--n 16] [--repeat 5]
    python -m benchmarks face [--corpus DIR] [--n 6] [--frames 24]
    python -m benchmarks pose [--sizes 160,240,320] [--people 6]
    python -m benchmarks audio [--n 8] [--batch 1,2,8,88]
    python -m benchmarks scene [--backbones resnet50,efficientnet-lite0] [--batch 1,4,12]
    python -m benchmarks train [--heads audio,face] [--workers 1,2] [--n 512]
    python -m benchmarks score [--n 24] [--actors 1,2] [--batch 8]
    python -m benchmarks scale [--sizes 1000,10000,100000] [--real 48]
    python -m benchmarks train-memory [--rows 100,1000]

(`python jobs/benchmark.py ...` is the same.) What each measures: the module docstrings.
"""
