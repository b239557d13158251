"""The `emotiw` command line (also ``python -m emotiw``): thin parsing over the jobs.

Subcommands:
    sample-corpus OUT     write the synthetic labelled corpus
    list URI              list the videos under a path or s3:// prefix
    decode URI            decode every video and print a per-clip summary table
    extract               the extract job: videos -> feature table
    train                 the train job: feature tables -> heads, fusions, registered model
    evaluate              the paper's tables of a model on a labelled feature table
    score                 the scoring job (main job): videos -> partitioned scores table
    timeline              a video's timeline from the tables, as a PNG
    report                a scores table's run report, one self-contained HTML page
    promote MODEL         point a registry alias (default champion) at a model version
    demo                  the main job on the embedded default (local Ray, local files)

Every job flag is generated from a field of the job's config dataclass (`emotiw.cli.flags`):
type, default and help come from the dataclass, so they are never written twice. Modality
settings are ``--<modality>-<field>`` on top of a named preset (``--preset paper`` or
``cpu-smoke``); ``--modalities`` picks the subset.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from emotiw.cli import flags, looking
from emotiw.cli.modality_flags import (
    add_model_args,
    modality_configs,
    storage_config,
    train_config,
)
from emotiw.core import logs
from emotiw.core.config import CLASS_NAMES, CorpusConfig, JobConfig, MediaConfig, StorageConfig
from emotiw.core.errors import EmotiwError, ExitCode, LeaseHeld, LeaseLost
from emotiw.io.windows import WindowConfig


def _weights(args: argparse.Namespace) -> Any:
    from emotiw.io.weights import WeightsConfig

    return WeightsConfig(
        **flags.given(args, WeightsConfig, "weights__"), storage=storage_config(args)
    )


def _media(args: argparse.Namespace) -> MediaConfig:
    return MediaConfig(**flags.given(args, MediaConfig, "media__"))


# --- commands --------------------------------------------------------------------------------


def _cmd_sample_corpus(args: argparse.Namespace) -> int:
    from emotiw.io.corpus import write_planted_video, write_sample_corpus

    cfg = CorpusConfig(**flags.given(args, CorpusConfig, "corpus__"))
    start = time.perf_counter()
    clips = write_sample_corpus(args.out, args.n, args.seed, cfg, storage_config(args))
    counts = {name: sum(c.label == i for c in clips) for i, name in enumerate(CLASS_NAMES)}
    print(
        f"wrote {len(clips)} synthetic clips + labels.txt to {args.out} "
        f"in {time.perf_counter() - start:.1f} s; classes {counts}"
    )
    if args.planted:
        rows = write_planted_video(args.out, args.planted, args.seed, cfg, storage_config(args))
        spans = ", ".join(f"{r['label']} {r['start_s']:g}-{r['end_s']:g} s" for r in rows)
        print(f"wrote planted.mp4 + planted.csv: {spans}")
    return 0


def _segments(spec: str) -> list[tuple[int, float]]:
    """argparse type of --planted (`emotiw.io.corpus.planted_segments`)."""
    from emotiw.io.corpus import planted_segments

    try:
        return planted_segments(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_list(args: argparse.Namespace) -> int:
    from emotiw.io.storage import list_videos

    for uri in list_videos(args.uri, storage_config(args)):
        print(uri)
    return 0


def _extract_config(args: argparse.Namespace) -> Any:
    """The extract job's config from its flags."""
    from emotiw.jobs.extract import ExtractConfig

    return ExtractConfig(
        **flags.given(args, ExtractConfig),  # --preset included (it always has a value)
        configs=modality_configs(args),
        media=_media(args),
        weights=_weights(args),
        storage=storage_config(args),
        job=_job(args),
    )


def _cmd_extract(args: argparse.Namespace) -> int:
    from emotiw.jobs.extract import run_extract

    cfg = _extract_config(args)
    summary = run_extract(cfg, args.address)
    print(summary, flush=True)
    return _exit_code("extract", summary, cfg.job)


def _cmd_train(args: argparse.Namespace) -> int:
    from emotiw.jobs.train import run_train

    cfg = train_config(args, _weights(args))
    result = run_train(cfg, args.address)
    print(f"registered {result.model_uri} (package {result.package_dir}, run {result.run_id})")
    print("validation accuracy: " + ", ".join(
        f"{name} {s['accuracy']:.3f}" for name, s in result.scores.items()
    ))  # fmt: skip
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from emotiw.jobs.score import ScoreConfig, run_score

    cfg = ScoreConfig(
        **flags.given(args, ScoreConfig),
        windows=WindowConfig(**flags.given(args, WindowConfig, "windows__")),
        media=_media(args),
        weights=_weights(args),
        storage=storage_config(args),
        job=_job(args),
    )
    summary = run_score(cfg, args.address)
    print(summary, flush=True)
    return _exit_code("score", summary, cfg.job)


def _job(args: argparse.Namespace) -> JobConfig:
    return JobConfig(**flags.given(args, JobConfig, "job__"))


def _exit_code(command: str, summary: Any, job: JobConfig) -> int:
    """A dry run: `ExitCode.NOTHING_NEW` when nothing is pending. A run:
    `ExitCode.ERROR_RATE` when too many of its clips ended as errors (so a scheduler alerts),
    after everything was committed and the summary printed."""
    if summary.pending is not None:
        return ExitCode.OK if sum(summary.pending.values()) else ExitCode.NOTHING_NEW
    committed = summary.committed
    if committed.error_rate > job.max_error_rate:
        logs.get("cli").error(
            f"emotiw {command}: error: {committed.errors} of {committed.rows} clips "
            f"({committed.error_rate:.0%}) ended as errors, more than --max-error-rate "
            f"{job.max_error_rate:g} (exit code {int(ExitCode.ERROR_RATE)})",
            extra=_fields(ExitCode.ERROR_RATE),
        )
        return ExitCode.ERROR_RATE
    return ExitCode.OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from emotiw.jobs.evaluate import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(**flags.given(args, EvaluateConfig), storage=storage_config(args))
    result = run_evaluate(cfg)
    print(result.markdown)
    print(f"written to {result.output}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from emotiw.tracking.client import promote

    uri, before = promote(args.model, args.alias, args.tracking_uri)
    name = uri.removeprefix("models:/").split("/")[0]
    was = f" (was version {before})" if before else ""
    print(f"models:/{name}@{args.alias} -> {uri}{was}")
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from emotiw.jobs.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(**flags.given(args, DemoConfig)))


# --- the parser ------------------------------------------------------------------------------


def _job_parser(sub: Any, name: str, help_text: str, cls: type, func: Any) -> Any:
    p = sub.add_parser(name, help=help_text, description=help_text)
    flags.add_fields(p, cls, skip=("preset",))  # --preset: `add_model_args`
    p.set_defaults(func=func)
    return p


def _add_runtime(p: argparse.ArgumentParser, media: bool = True) -> None:
    from emotiw.io.weights import WeightsConfig

    if media:
        flags.add_fields(
            p.add_argument_group("decoding"), MediaConfig, "media-", dest_prefix="media__"
        )
    flags.add_fields(p.add_argument_group("weights"), WeightsConfig, dest_prefix="weights__")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local/auto)")


def _add_job(p: argparse.ArgumentParser) -> None:
    codes = "; ".join(f"{int(code)} {code.meaning}" for code in ExitCode)
    group = p.add_argument_group("commits, lease and retries", f"exit codes: {codes}")
    flags.add_fields(group, JobConfig, dest_prefix="job__")


def build_parser() -> argparse.ArgumentParser:
    from emotiw.jobs.demo import DemoConfig
    from emotiw.jobs.evaluate import EvaluateConfig
    from emotiw.jobs.extract import ExtractConfig
    from emotiw.jobs.score import ScoreConfig
    from emotiw.jobs.train import TrainConfig
    from emotiw.models import fusion

    parser = argparse.ArgumentParser(prog="emotiw", description=__doc__.split("\n\n")[0])
    flags.add_fields(
        parser.add_argument_group("object storage"), StorageConfig, dest_prefix="storage__"
    )
    verbose = "print the traceback of a failure (and not only its one-line message)"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose)
    logging_flags = (
        (("--log-level",), {"choices": logs.LEVELS, "default": None,
                            "help": "level of the diagnostics on stderr (default info)"}),
        (("--log-format",), {"choices": logs.FORMATS, "default": None,
                             "help": "text, or json: one JSON object per line (log shippers)"}),
    )  # fmt: skip
    for names, options in logging_flags:
        parser.add_argument(*names, **options)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-corpus", help="write the synthetic labelled sample corpus")
    p.add_argument("out", help="output directory or s3:// prefix")
    p.add_argument("--n", type=int, default=12, help="number of clips (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planted", type=_segments, metavar="CLASS:SECONDS,...",
                   help="also write planted.mp4, one long video whose every cue follows these "
                   "classes in turn (e.g. positive:40,negative:40), and planted.csv, its "
                   "ground truth")  # fmt: skip
    flags.add_fields(p, CorpusConfig, dest_prefix="corpus__")
    p.set_defaults(func=_cmd_sample_corpus)

    p = sub.add_parser("list", help="list video files under a path or s3:// prefix")
    p.add_argument("uri")
    p.set_defaults(func=_cmd_list)

    looking.add_parsers(sub)

    p = _job_parser(sub, "extract", "extract every modality's features into the feature "
                    "table", ExtractConfig, _cmd_extract)  # fmt: skip
    add_model_args(p, heads=False)
    _add_runtime(p)
    _add_job(p)

    p = _job_parser(sub, "train", "train each head and the fusion (Ray Train, MLflow)",
                    TrainConfig, _cmd_train)  # fmt: skip
    group = p.add_argument_group("fusion")
    flags.add_fields(group, fusion.Config, "fusion-", skip=("modalities",), dest_prefix="fusion__")
    add_model_args(p)
    _add_runtime(p, media=False)

    p = _job_parser(sub, "score", "score clips into the partitioned scores table (main job)",
                    ScoreConfig, _cmd_score)  # fmt: skip
    group = p.add_argument_group("long videos", "videos longer than --media-max-duration-s are "
                                 "cut into windows, each scored as a clip")  # fmt: skip
    flags.add_fields(group, WindowConfig, dest_prefix="windows__")
    _add_runtime(p)
    _add_job(p)

    _job_parser(sub, "evaluate", "metrics tables of a model on a feature table", EvaluateConfig,
                _cmd_evaluate)  # fmt: skip
    p = sub.add_parser("promote", help="point a registry alias (champion) at a model version")
    p.add_argument("model", help="models:/name/version (or /latest, @alias)")
    alias_help = "alias to set (default champion: what the schedule scores with)"
    p.add_argument("--alias", default="champion", help=alias_help)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.set_defaults(func=_cmd_promote)

    _job_parser(sub, "demo", "run the main job on the embedded default (local files)",
                DemoConfig, _cmd_demo)  # fmt: skip
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help=verbose)  # fmt: skip
        for names, options in logging_flags:
            command.add_argument(*names, **{**options, "default": argparse.SUPPRESS})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and a documented exit code
    (`ExitCode`); ``--verbose`` adds the traceback."""
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    log = logs.get("cli")
    if args.verbose:  # Ray Data's INFO messages too (emotiw.jobs.pipeline.quiet_ray_data)
        os.environ["EMOTIW_VERBOSE"] = "1"
    else:  # MLflow's INFO lines ("Creating initial MLflow database tables") only with -v
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if not sys.stderr.isatty():  # its download bars, off a terminal: one line per update
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        log.error(f"emotiw {args.command}: interrupted", extra=_fields(130))
        return 130
    except Exception as exc:
        ours = _our_error(exc)
        trace = exc if args.verbose else None
        message, code = f"emotiw {args.command}: error: {_one_line(ours or exc)}", ExitCode.USAGE
        if isinstance(ours, LeaseHeld | LeaseLost):
            message = f"emotiw {args.command}: {ours.message}"
        if ours is not None:
            code = ours.exit_code
        elif not isinstance(exc, ValueError):  # (a ValueError: a config value rejected)
            hint = "" if args.verbose else " (--verbose prints the traceback)"
            message = f"emotiw {args.command}: unexpected {type(exc).__name__}: {_one_line(exc)}"
            message, code = message + hint, ExitCode.FAILED
        log.error(message, exc_info=trace, extra=_fields(code, ours))
        return code


def _fields(code: int, error: EmotiwError | None = None) -> dict[str, Any]:
    """A failure's structured fields (JSON log lines)."""
    return {"fields": {"exit_code": int(code), "reason": error.reason if error else None}}


def _our_error(exc: BaseException) -> EmotiwError | None:
    """The project's error behind `exc`: itself, or the cause a Ray task or actor error
    carries (a missing file found inside an actor still exits with its own code)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EmotiwError):
            return current
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def _one_line(exc: BaseException) -> str:
    """The first line of a message."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
