"""The benchmarks (`python jobs/benchmark.py STAGE`, `benchmarks/`): in `make test` each runs
in process at a tiny size and prints its figures (the structure is asserted, never a speed);
in the nightly tier the cheap ones run at the sizes the benchmarks page quotes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, job_env


def run_benchmark(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``python jobs/benchmark.py ARGS`` in process (tiny sizes: each benchmark's code runs
    and prints its figures; the sizes the docs quote run in the nightly tier)."""
    from benchmarks.__main__ import main

    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_benchmark_decode_prints_ratio(capsys) -> None:
    assert "ratio media.decode / limit = " in run_benchmark(capsys, "decode", "--n", "3",
                                                            "--repeat", "1")  # fmt: skip


@pytest.mark.e2e  # many seconds (child processes, models): out of make test-fast
def test_benchmark_actor_memory_prints_load_and_work_peaks(capsys) -> None:
    out = run_benchmark(capsys, "actor-memory", "--presets", "cpu-smoke", "--inputs", "sample",
                        "--frame-batches", "2", "--batch", "1")  # fmt: skip
    rows = [line for line in out.splitlines() if "work peak" in line]
    assert [r.split(":")[0].strip() for r in rows] == [
        "extract cpu-smoke sample", "model cpu-smoke batch 1 frames/forward 2"
    ], out  # fmt: skip
    assert all(" MiB, work peak " in r and r.strip().endswith("s)") for r in rows)


@pytest.mark.e2e  # many seconds: out of make test-fast
def test_benchmark_face_prints_split_and_recall(capsys) -> None:
    out = run_benchmark(capsys, "face", "--n", "2", "--frames", "3")
    assert "detection" in out and "FER" in out
    assert "recall<56px" in out and "1.00x" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert {r[0] for r in rows if len(r) == 8} == {"hog", "cnn"}  # both detectors measured


@pytest.mark.e2e  # many seconds (a server, models): out of make test-fast
def test_benchmark_pose_prints_sizes_and_ratios(capsys) -> None:
    out = run_benchmark(capsys, "pose", "--sizes", "128", "--people", "1", "--frames", "2")
    assert "random-init weights" in out and "x decode" in out
    # one row for the size at --people, then one at one person (the first column is the size;
    # other columns can hold 128 by chance, e.g. a "x decode" ratio)
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert [r[0] for r in rows if len(r) == 6 and r[1] != "people"] == ["128", "128"]


def test_benchmark_audio_prints_batches_and_logmel(capsys) -> None:
    out = run_benchmark(capsys, "audio", "--n", "2", "--batch", "1,2")
    assert "speed vs 1/forward" in out and "logmel" in out and "random-init" in out


@pytest.mark.e2e  # many seconds (a server, models): out of make test-fast
def test_benchmark_scene_prints_sizes_and_speeds(capsys) -> None:
    out = run_benchmark(
        capsys, "scene", "--backbones", "efficientnet-lite0", "--batch", "4", "--head-batch",
        "2", "--repeat", "1",
    )  # fmt: skip
    assert "MB float16" in out and "the JPEG frames" in out
    assert out.count("channels_last   inference") == 2 and "1.00x" in out
    assert "ConvLSTM heads + FC" in out


@pytest.mark.e2e  # many seconds: out of make test-fast
def test_benchmark_isolation_prints_both_speeds_and_the_ratio(capsys) -> None:
    out = run_benchmark(capsys, "isolation", "--n", "2", "--repeat", "1")
    assert "in the actor's process:" in out and "in a child process:" in out
    assert "child start-up" in out and "ratio isolated / in-process = " in out


def run_script(*args: str, timeout: int = 300) -> str:
    """``python jobs/benchmark.py ARGS`` as its own process (on the session's cluster in an
    e2e or nightly test); asserts it succeeds and returns its stdout."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs/benchmark.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=job_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_benchmark_command_runs_as_a_script() -> None:
    """`python jobs/benchmark.py` itself (the path the docs give), on the smallest run."""
    assert "ratio media.decode / limit = " in run_script("decode", "--n", "1", "--repeat", "1")


@pytest.mark.e2e
def test_benchmark_commits_prints_chunked_vs_one_commit() -> None:
    """On the session's cluster, as its own process: its Ray Data pipeline builds score rows
    from the modality registry, which in this process also holds the test suite's toy."""
    out = run_script("commits", "--n", "300", "--commit-every", "100", "--targets", "local")
    assert "local: 300 clips" in out and "throughput ratio chunked/single" in out


AT_SIZE = {  # the benchmarks page's commands that fit the nightly tier, and a line each prints
    "decode": (("decode",), "ratio media.decode / limit = "),
    "face": (("face",), "recall<56px"),
    "audio": (("audio",), "speed vs 1/forward"),
    "scene": (("scene", "--backbones", "efficientnet-lite0"), "ConvLSTM heads + FC"),
    "commits": (("commits",), "throughput ratio chunked/single"),
}


@pytest.mark.nightly
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("stage", list(AT_SIZE))
def test_benchmark_at_its_documented_size(stage: str) -> None:
    """`python jobs/benchmark.py STAGE` at its default size, as the benchmarks page runs it:
    it finishes and prints a same-run ratio.
    Sibling in make test: tests/test_benchmarks.py::test_benchmark_decode_prints_ratio,
    tests/test_benchmarks.py::test_benchmark_face_prints_split_and_recall,
    tests/test_benchmarks.py::test_benchmark_audio_prints_batches_and_logmel,
    tests/test_benchmarks.py::test_benchmark_scene_prints_sizes_and_speeds and
    tests/test_benchmarks.py::test_benchmark_commits_prints_chunked_vs_one_commit (each at a
    tiny size)."""
    args, printed = AT_SIZE[stage]
    out = run_script(*args, timeout=1100)
    assert printed in out, out[-3000:]


@pytest.mark.e2e
def test_benchmark_long_video_prints_its_four_ratios() -> None:
    """A 15 s video against its 3 clips, on the session's cluster as its own process:
    decode, S3 bytes (its own moto server), peak memory and wall time, each as a ratio."""
    out = run_script("long-video", "--minutes", "0.25", "--hours", "0.02", "--sample", "2",
                     "--repeat", "1")  # fmt: skip
    for line in ("decode per window: inside the video", "ratio beyond the header",
                 "extract peak RSS: 5 s clip", "ratio clips/long"):  # fmt: skip
        assert line in out, out[-3000:]
