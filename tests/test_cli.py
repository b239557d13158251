"""The `emotiw` console script and the benchmark entrypoint, run as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import job_env, main_here
from helpers import run_cli as run


def test_sample_corpus_list_and_decode(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    proc = run("sample-corpus", str(out), "--n", "3", "--seed", "2")
    assert "wrote 3 synthetic clips" in proc.stdout
    listed = run("list", str(out)).stdout.split()
    assert listed == [str(out / f"clip_{i:04d}.mp4") for i in range(3)]
    # A broken file among good ones becomes a row with an error; the command still succeeds.
    (out / "broken.mp4").write_bytes(b"not a video at all")
    table = run("decode", str(out), "--labels", str(out / "labels.txt")).stdout
    assert "broken" in table and "not_media:" in table
    assert table.count("12/12") == 3
    assert "4 clips: 3 decoded, 1 failed" in table


def test_decode_on_s3(tmp_path: Path, s3_bucket: str, s3_storage, monkeypatch) -> None:
    from helpers import TEST_KEY, TEST_SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    endpoint = s3_storage.endpoint_url
    run("--endpoint-url", endpoint, "sample-corpus", f"{s3_bucket}/drop", "--n", "2")
    table = run("--endpoint-url", endpoint, "decode", f"{s3_bucket}/drop").stdout
    assert "2 clips: 2 decoded, 0 failed" in table


def test_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    proc = run("decode", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 66  # the input does not exist
    assert "not_found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "labels.txt").write_text("Vid_name Label\na 7\n")
    (tmp_path / "a.mp4").write_bytes(b"x")
    proc = run("decode", str(tmp_path), "--labels", str(tmp_path / "labels.txt"), check=False)
    assert proc.returncode == 2 and "labels.txt:2: unknown label '7'" in proc.stderr


def _fails(code: int, *args: str, words: tuple[str, ...] = (), here: bool = False) -> str:
    """Run `emotiw ARGS` (`here`: ``emotiw.cli.commands.main(ARGS)`` in this process, as the console
    script does, without paying a Python start-up per case): it exits with `code` and one
    line on stderr, no traceback."""
    proc = main_here(*args) if here else run(*args, check=False, timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("emotiw ")]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _fails_here(code: int, *args: str, words: tuple[str, ...] = ()) -> str:
    return _fails(code, *args, words=words, here=True)


@pytest.mark.e2e  # many seconds: out of make test-fast
def test_each_user_error_class_exits_with_its_code_in_one_line(tmp_path: Path) -> None:
    """The exit codes of `emotiw.core.errors.ExitCode`, one per class of user error, each from a
    real command with the real failure (nothing started, no Ray): the console script's
    process for the first and the logging variants, its `main` in this process for the rest."""
    from helpers import free_port, make_package, smoke_configs

    package = make_package(tmp_path / "model", smoke_configs())
    clips, out = tmp_path / "clips", str(tmp_path / "scores")
    clips.mkdir()
    score = ("score", "--output", out, "--model")
    # 2: bad flags, and a value the config rejects
    _fails(2, "score", "--input", str(clips), "--output", out, "--bogus")  # a real process's code
    _fails_here(2, *score, str(package), "--input", str(clips), "--model-batch-size", "0",
                words=("model_batch_size",))  # fmt: skip
    # 66: the input does not exist
    _fails_here(66, *score, str(package), "--input", str(tmp_path / "nope"),
                words=("not_found",))  # fmt: skip
    # 67: no package at the path; no such alias in the registry
    _fails_here(67, *score, str(tmp_path / "nope"), "--input", str(clips),
                words=("missing_model",))  # fmt: skip
    registry = f"sqlite:///{tmp_path}/mlflow.db"
    _fails_here(67, *score, "models:/emotiw@champion", "--input", str(clips), "--tracking-uri",
                registry, words=("missing_model", "emotiw@champion"))  # fmt: skip
    # 68: the paper preset's ImageNet ResNet-50 is not staged here (checked before any actor)
    extract = ("extract", "--videos", str(clips), "--output", str(tmp_path / "f"))
    _fails_here(68, *extract, "--preset", "paper", "--weights-dir", str(tmp_path),
                words=("missing_weights", "resnet50"))  # fmt: skip
    # 69: nothing listens on the MLflow server's or the S3 endpoint's port
    port = free_port()
    _fails_here(69, *score, "models:/emotiw/1", "--input", str(clips), "--tracking-uri",
                f"http://127.0.0.1:{port}", words=("unavailable", "did not answer"))  # fmt: skip
    _fails_here(69, "--endpoint-url", f"http://127.0.0.1:{port}", "list", "s3://bucket/clips/",
                words=("io",))  # fmt: skip
    # 73: the output cannot be created (a file where its folder should be)
    (tmp_path / "a-file").write_text("x")
    _fails_here(73, "score", "--output", str(tmp_path / "a-file" / "scores"), "--model",
                str(package), "--input", str(clips),
                words=("output_not_writable", "is not a folder"))  # fmt: skip
    # 69: GPUs asked for on a local run of a machine without CUDA (it would wait forever)
    import torch

    if not torch.cuda.is_available():
        _fails_here(69, *score, str(package), "--input", str(clips), "--gpus-per-model-actor",
                    "1", words=("no CUDA device", "forever"))  # fmt: skip
    # --verbose adds the traceback to the same line and code
    proc = run("-v", *score, str(tmp_path / "nope"), "--input", str(clips), check=False)
    assert proc.returncode == 67 and "Traceback" in proc.stderr and "missing_model" in proc.stderr
    # --log-format json: the same failure as one JSON object a log shipper parses
    proc = run(*score, str(tmp_path / "nope"), "--input", str(clips), "--log-format", "json",
               check=False)  # fmt: skip
    [line] = proc.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["exit_code"], record["reason"]) == (
        "error",
        67,
        "missing_model",
    )
    assert (
        record["message"].startswith("emotiw score: error: missing_model") and proc.returncode == 67
    )
    with_trace = run("--log-format", "json", "-v", *score, str(tmp_path / "nope"), "--input",
                     str(clips), check=False)  # fmt: skip
    assert "Traceback" in json.loads(with_trace.stderr.splitlines()[-1])["traceback"]


@pytest.mark.nightly
def test_demo_trains_registers_scores_and_reruns(tmp_path: Path) -> None:
    """`make demo`'s command, smaller: corpus -> quick models registered in MLflow -> scoring
    through Ray -> Parquet -> summary; a second demo reuses the registered model.
    Sibling in make test: tests/test_cli.py::test_demo_scores_a_drop_with_a_registered_model
    (the demo's scoring half) and
    tests/test_training.py::test_train_learns_cues_logs_to_mlflow_and_registers
    (extract, train and registration through the same jobs)."""
    env = job_env()  # on the session's cluster
    work = str(tmp_path / "demo")
    proc = run("demo", "--workdir", work, "--n-train", "9", "--n-drop", "3", env=env, timeout=900)
    out = proc.stdout
    assert "no registered model yet" in out and "registered models:/emotiw-demo/1" in out
    assert "head-scene epoch 8/8" in out  # progress lines
    _assert_demo_scored(proc, Path(work))
    again = run("demo", "--workdir", work, "--n-train", "9", "--n-drop", "3", env=env, timeout=900)
    assert "using the registered models:/emotiw-demo/1" in again.stdout
    assert "5 already scored" in again.stdout
    _run_local_tutorial(Path(work), tmp_path / "tutorial")


def _run_local_tutorial(demo: Path, where: Path) -> None:
    """docs/tutorials/score-local.md as written, after its `make demo` step (the demo above):
    every other command runs in a folder whose ``runs/demo`` is the demo's and ``.venv`` ours,
    with no Ray address, as a user's shell would."""
    from helpers import ROOT, doc_commands

    (where / "runs").mkdir(parents=True)
    (where / "runs" / "demo").symlink_to(demo)
    (where / ".venv").symlink_to(Path(sys.executable).parents[1])
    steps = doc_commands(ROOT / "docs" / "tutorials" / "score-local.md")
    assert steps[0] == ["make", "demo"] and len(steps) == 4, steps
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    outputs = []
    for argv in steps[1:]:
        proc = subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{argv}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert "4 clips listed, 0 already scored, 4 scored" in outputs[1]
    assert "predicted" in outputs[2] and "prob_positive" in outputs[2]  # the printed table
    import duckdb  # what it printed (DuckDB wraps long URIs across lines): four scored clips

    rows = duckdb.sql(
        "SELECT predicted, error FROM read_parquet("
        f"'{where}/runs/tutorial/scores/*/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert len(rows) == 4 and all(p and e is None for p, e in rows), rows


@pytest.mark.e2e
def test_demo_scores_a_drop_with_a_registered_model(tmp_path: Path, smoke_package: Path) -> None:
    """`emotiw demo` where a model is registered already (the demo's second run, a scheduled
    tick): no training corpus, no training; the drop scored through Ray into Parquet, the
    rerun finding nothing new, DuckDB's summary, a clean stderr, the cookbook on its table."""
    from emotiw.jobs.demo import _MODEL_NAME
    from emotiw.tracking.client import log_package, mlflow_client

    work = tmp_path / "demo"
    client = mlflow_client(f"sqlite:///{work}/mlflow.db", "emotiw", str(work))
    with client.start_run():
        log_package(client, smoke_package, _MODEL_NAME)
    proc = run("demo", "--workdir", str(work), "--n-drop", "3", env=job_env(), timeout=600)
    assert f"using the registered models:/{_MODEL_NAME}/1" in proc.stdout
    assert not (work / "corpus").exists() and "no registered model yet" not in proc.stdout
    _assert_demo_scored(proc, work)


def _assert_demo_scored(proc: subprocess.CompletedProcess[str], work: Path) -> None:
    """What a demo prints and writes once it has a model: the drop's 3 clips and 2 bad files
    scored, the rerun, the summary; on stderr progress lines and nothing else, but for the
    one line Ray core prints for every Ray Data actor pool (README "Progress and logs":
    ray-project/ray#57733); the README's query cookbook runs on its table."""
    from helpers import run_cookbook

    out = proc.stdout
    assert "5 clips listed, 0 already scored, 3 scored, 2 errors (empty 1, not_media 1)" in out
    assert "5 clips listed, 5 already scored, 0 scored" in out  # the rerun
    assert "error: not_media" in out and "agreement of each modality's head" in out
    known = "has constructor arguments in the object store and max_restarts > 0"
    progress = re.compile(r"^(score|extract): \d+/\d+ clips \(\d+%\), [\d.]+ clips/s, \d+ errors")
    stray = [line for line in proc.stderr.splitlines()
             if line.strip() and not progress.match(line) and known not in line]  # fmt: skip
    assert not stray, "\n".join(stray)
    assert any(progress.match(line) for line in proc.stderr.splitlines())  # one at least
    book = run_cookbook(work / "scores")
    assert len(book["most negative clips this week (each clip's current score)"]) == 3
    assert sum(n for _, _, n, _ in book["sentiment share per day"]) == 3
    assert (
        book["two model versions compared on the clips both scored (--rescore-on-model-change)"]
        == []
    )


def _subparsers(parser):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_maps_to_a_config_field() -> None:
    """Flags are generated from the config dataclasses: each one's destination names a field
    (with the prefix of its config), except the few documented shorthands."""
    import dataclasses

    from emotiw import modalities
    from emotiw.cli.commands import build_parser
    from emotiw.core.config import CorpusConfig, JobConfig, MediaConfig, StorageConfig
    from emotiw.io.weights import WeightsConfig
    from emotiw.io.windows import WindowConfig
    from emotiw.jobs.demo import DemoConfig
    from emotiw.jobs.evaluate import EvaluateConfig
    from emotiw.jobs.extract import ExtractConfig
    from emotiw.jobs.report import ReportConfig, TimelineConfig
    from emotiw.jobs.score import ScoreConfig
    from emotiw.jobs.train import TrainConfig
    from emotiw.models import fusion

    def fields(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    prefixed = {
        "media__": MediaConfig, "weights__": WeightsConfig, "storage__": StorageConfig,
        "windows__": WindowConfig,
        "fusion__": fusion.Config, "corpus__": CorpusConfig, "job__": JobConfig,
        **{f"m_{s.name}__": s.Config for s in modalities.specs()},
    }  # fmt: skip
    jobs = {"extract": ExtractConfig, "train": TrainConfig, "score": ScoreConfig,
            "evaluate": EvaluateConfig, "demo": DemoConfig, "timeline": TimelineConfig,
            "report": ReportConfig}  # fmt: skip
    shorthands = {"help", "verbose", "log_level", "log_format", "preset", "modalities",
                  "random_init", "address", "out", "planted",
                  "n", "seed", "uri", "labels", "model", "alias", "tracking_uri"}  # fmt: skip
    parser = build_parser()
    checked = 0
    for command, sub in _subparsers(parser).items():
        for action in sub._actions:
            dest = action.dest
            prefix = next((p for p in prefixed if dest.startswith(p)), None)
            if prefix is not None:
                assert dest.removeprefix(prefix) in fields(prefixed[prefix]), (command, dest)
            elif command in jobs and dest in fields(jobs[command]):
                pass
            else:
                assert dest in shorthands, (command, dest)
            checked += 1
    assert checked > 150


def test_absent_flags_leave_the_dataclass_defaults_and_presets_build() -> None:
    from emotiw import modalities
    from emotiw.cli.commands import build_parser, modality_configs
    from emotiw.jobs.extract import ExtractConfig
    from emotiw.models.features import ModalityConfigs

    parser = build_parser()
    args = parser.parse_args(["extract", "--videos", "v", "--output", "o"])
    assert not hasattr(args, "actors")  # absent: the dataclass default applies
    assert modality_configs(args) == ModalityConfigs.preset("paper")
    assert (
        ExtractConfig(videos="v", output="o").extract_actors == 0
    )  # no cap: grows with the cluster
    presets = {p for s in modalities.specs() for p in s.presets}
    assert {"paper", "cpu-smoke"} <= presets
    for preset in presets:
        args = parser.parse_args(["train", "--features", "f", "--preset", preset])
        assert modality_configs(args) == ModalityConfigs.preset(preset)
    args = parser.parse_args(
        ["train", "--features", "f", "--preset", "cpu-smoke", "--modalities", "audio,face",
         "--audio-lr", "0.5", "--random-init", "face", "--fusion-method", "vae"]
    )  # fmt: skip
    configs = modality_configs(args)
    assert configs.modalities == ("audio", "face") and configs.of("audio").lr == 0.5
    assert configs.of("audio").features == "logmel" and configs.of("face").weights == "random-init"
    assert args.fusion__method == "vae"
    with pytest.raises(SystemExit):
        parser.parse_args(["score", "--output", "o", "--model", "m", "--extract-actors", "x"])


def test_train_takes_front_end_settings_from_the_feature_table(tmp_path: Path) -> None:
    """`train` reads what extract recorded (`front_ends`): no extract flag is repeated, head
    flags still apply, a contradicting flag or a modality the table lacks is a clear error,
    and extract offers no head flags (they did nothing there)."""
    import json

    import pyarrow as pa

    from emotiw.cli.commands import build_parser
    from emotiw.cli.modality_flags import _train_configs
    from emotiw.io.storage import arrow_filesystem
    from emotiw.models.features import ModalityConfigs, feature_schema
    from emotiw.tables.chunks import ChunkWriter

    def table(name: str, configs: ModalityConfigs) -> str:
        fs, root = arrow_filesystem(str(tmp_path / name))
        writer = ChunkWriter(fs, root, "r", feature_schema(), 100, 600)
        row = {"uri": f"{name}/a.mp4", "front_ends": json.dumps(configs.front_ends())}
        writer.write(pa.Table.from_pylist([row], schema=feature_schema()))
        writer.close()
        return str(tmp_path / name)

    smoke = ModalityConfigs.preset("cpu-smoke")  # lite0 backbone, log-mel audio, no pose
    train, val = table("train", smoke), table("val", smoke)
    parser = build_parser()

    def configs(*flags: str) -> ModalityConfigs:
        return _train_configs(parser.parse_args(["train", "--features", train, *flags]))

    # the preset picks the training schedule and stacking unless a flag says otherwise
    from emotiw.cli.modality_flags import train_config

    def job(*flags: str) -> Any:
        return train_config(parser.parse_args(["train", "--features", train, *flags]), None)

    paper = job("--val-features", val)
    assert (paper.schedule, paper.stacking_folds, paper.fusion.hidden_units) == ("paper", 5, 72)
    assert (job("--epochs", "3").schedule, job("--epochs", "3").stacking_folds) == ("uniform", 5)
    quick = job("--preset", "cpu-smoke")
    assert (quick.schedule, quick.stacking_folds, quick.fusion.presence_flags) == (
        "uniform",
        0,
        True,
    )
    assert job("--preset", "cpu-smoke", "--schedule", "paper").schedule == "paper"
    got = configs("--val-features", val, "--scene-lr", "0.002")
    assert got.modalities == ("scene", "audio", "face")  # the table's, not the paper preset's
    assert got.of("scene").backbone == "efficientnet-lite0" and got.of("audio").features == "logmel"
    assert got.of("scene").lr == 0.002 and got.front_ends() == smoke.front_ends()
    assert configs("--scene-backbone", "efficientnet-lite0").of("scene").backbone  # agrees: fine
    with pytest.raises(ValueError, match="--scene-backbone resnet50 conflicts"):
        configs("--scene-backbone", "resnet50")
    with pytest.raises(ValueError, match="no pose features"):
        configs("--modalities", "scene,pose")
    paper = table("paper", ModalityConfigs.preset("paper", ("scene", "audio", "face")))
    with pytest.raises(ValueError, match="different front-end settings"):
        configs("--val-features", paper)
    with pytest.raises(SystemExit):  # extract has no head flags
        parser.parse_args(["extract", "--videos", "v", "--output", "o", "--scene-lr", "0.1"])


def test_one_flag_name_per_concept_and_auto_is_spelt_auto() -> None:
    """The extract pool is configured with the same flags in extract and score; no setting
    means "auto" by a magic number."""
    import dataclasses

    from emotiw.cli.commands import build_parser
    from emotiw.jobs.extract import ExtractConfig
    from emotiw.jobs.score import ScoreConfig
    from emotiw.jobs.train import TrainConfig

    subs = _subparsers(build_parser())
    options = {
        name: {o for a in sub._actions for o in a.option_strings} for name, sub in subs.items()
    }
    pool = {"--extract-actors", "--min-extract-actors", "--cpus-per-extract-actor"}
    assert pool <= options["extract"] & options["score"]
    assert "--skip-existing" in options["extract"] & options["score"]
    assert not {"--actors", "--cpu-actors", "--min-actors"} & (
        options["extract"] | options["score"]
    )
    for cls in (ExtractConfig, ScoreConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert not (isinstance(f.default, int | float) and f.default < 0), (cls, f.name)
    assert ScoreConfig(input="i", output="o", model="m").gpus_per_model_actor == "auto"
    with pytest.raises(ValueError, match="'auto' or a number"):
        ScoreConfig(input="i", output="o", model="m", gpus_per_model_actor="-1")


@pytest.mark.e2e  # many seconds (a server, models): out of make test-fast
def test_promote_points_champion_at_a_version_and_the_docstring_lists_every_command(
    tmp_path: Path,
) -> None:
    """`emotiw promote` against a real MLflow registry (SQLite store): training registers
    versions under the ``candidate`` alias; only promote moves ``champion``, which the
    schedule scores with."""
    from mlflow import MlflowClient

    import emotiw.cli.commands
    from emotiw.cli.commands import build_parser
    from emotiw.tracking.client import model_ref

    registry = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(registry)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=(tmp_path / "artifacts").as_uri())
    out = run("promote", "models:/m/1", "--tracking-uri", registry).stdout
    assert "models:/m@champion -> models:/m/1" in out and "was" not in out
    out = run("promote", "models:/m/latest", "--tracking-uri", registry).stdout
    assert "models:/m@champion -> models:/m/2 (was version 1)" in out
    assert model_ref("models:/m@champion", registry).version == "2"
    _fails(67, "promote", "models:/m/9", "--tracking-uri", registry, words=("missing_model",))
    # docs and code agree: the module docstring names every subcommand
    doc = emotiw.cli.commands.__doc__.split("\n\n")[1]
    listed = {line.split()[0] for line in doc.splitlines()[1:]}
    assert listed == set(_subparsers(build_parser()))


def test_extract_dry_run_counts_pending_clips_read_only(tmp_path: Path) -> None:
    import pyarrow as pa

    from emotiw.io.storage import arrow_filesystem, iter_video_objects
    from emotiw.models.features import feature_schema
    from emotiw.tables.chunks import ChunkWriter
    from helpers import write_clip

    clips, table = tmp_path / "clips", tmp_path / "features"
    clips.mkdir()
    for name in ("a.mkv", "b.mkv"):
        write_clip(clips / name, n_frames=10)
    args = ("extract", "--videos", str(clips), "--output", str(table), "--preset", "cpu-smoke",
            "--dry-run")  # fmt: skip
    out = run(*args).stdout
    assert "dry run: 2 clips listed, 0 already extracted, 2 to extract (2 new, 0 changed" in out
    assert not table.exists()  # read-only: no lease, no staging, no table
    fs, root = arrow_filesystem(str(table))
    writer = ChunkWriter(fs, root, "r", feature_schema(), 100, 600)
    rows = [{"uri": o.uri, "etag": o.etag} for o in iter_video_objects(str(clips))]
    writer.write(pa.Table.from_pylist(rows, schema=feature_schema()))
    writer.close()
    proc = run(*args, check=False)
    assert proc.returncode == 4 and "2 already extracted, 0 to extract" in proc.stdout
    assert not (table / "_lease.json").exists()
