"""The `emotiw` command line: thin argument parsing over the library.

Subcommands:
    sample-corpus OUT --n N --seed S   write the synthetic labelled corpus
    list URI                           list the videos under a path or s3:// prefix
    decode URI [--labels FILE]         decode every video and print a per-clip summary table
    demo [--workdir DIR]               the main job on the embedded default (local files)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from emotiw.config import CLASS_NAMES, CorpusConfig, MediaConfig, StorageConfig
from emotiw.errors import EmotiwError


def _storage(args: argparse.Namespace) -> StorageConfig:
    return StorageConfig.from_env(endpoint_url=args.endpoint_url)


def decode_summary(
    uris: Sequence[str],
    cfg: MediaConfig,
    storage: StorageConfig | None = None,
    labels: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Decode each clip; one summary row per clip, failures as rows with `error` set."""
    from emotiw.errors import DecodeError
    from emotiw.media import decode
    from emotiw.storage import video_id

    rows = []
    for uri in uris:
        vid = video_id(uri)
        label = labels.get(vid) if labels else None
        row: dict[str, Any] = {
            "video": vid,
            "label": CLASS_NAMES[label] if label is not None else "",
        }
        start = time.perf_counter()
        try:
            clip = decode(uri, cfg, storage)
        except DecodeError as exc:
            row.update(decode_ms=round(1000 * (time.perf_counter() - start), 1), error=str(exc))
            rows.append(row)
            continue
        meta = clip.meta
        row.update(
            duration_s=round(meta.duration_s, 2),
            fps=round(meta.fps, 2),
            size=f"{meta.width}x{meta.height}",
            codecs=f"{meta.video_codec}/{meta.audio_codec or '-'}",
            frames=f"{clip.n_valid_frames}/{len(clip.frame_mask)}",
            indices=f"{clip.frame_indices[0]}..{clip.frame_indices[clip.frame_mask].max()}",
            audio_s=round(clip.audio_duration_s, 2),
            has_audio=meta.has_audio,
            decode_ms=round(1000 * (time.perf_counter() - start), 1),
            error="",
        )
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a fixed-width text table (columns in first-seen order, blanks for missing)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(line.rstrip() for line in lines)


def _cmd_sample_corpus(args: argparse.Namespace) -> int:
    from emotiw.corpus import write_sample_corpus

    cfg = CorpusConfig(cue_strength=args.cue_strength)
    start = time.perf_counter()
    clips = write_sample_corpus(args.out, args.n, args.seed, cfg, _storage(args))
    counts = {name: sum(c.label == i for c in clips) for i, name in enumerate(CLASS_NAMES)}
    print(
        f"wrote {len(clips)} synthetic clips + labels.txt to {args.out} "
        f"in {time.perf_counter() - start:.1f} s; classes {counts}"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from emotiw.storage import list_videos

    for uri in list_videos(args.uri, _storage(args)):
        print(uri)
    return 0


def _print_decode_table(uri: str, labels_url: str | None, storage: StorageConfig) -> int:
    from emotiw.labels import read_labels
    from emotiw.storage import list_videos

    uris = list_videos(uri, storage)
    labels = read_labels(labels_url, storage) if labels_url else None
    rows = decode_summary(uris, MediaConfig(), storage, labels)
    print(format_table(rows))
    failed = sum(bool(r["error"]) for r in rows)
    print(f"\n{len(rows)} clips: {len(rows) - failed} decoded, {failed} failed")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    return _print_decode_table(args.uri, args.labels, _storage(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from emotiw.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(workdir=args.workdir, n_train=args.n, n_drop=args.n_drop, seed=args.seed)
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags choosing the modalities and their front-ends (shared by extract, train, score)."""
    from emotiw.modalities import MODALITIES

    p.add_argument(
        "--modalities",
        type=lambda text: tuple(text.split(",")),
        default=MODALITIES,
        help="comma-separated subset of scene,pose,audio,face (default: all)",
    )
    p.add_argument("--audio-features", choices=("openl3", "logmel"), default="openl3")
    p.add_argument(
        "--scene-backbone", choices=("resnet50", "efficientnet-lite0"), default="resnet50"
    )
    p.add_argument("--pose-input-size", type=int, default=320)
    p.add_argument(
        "--random-init",
        default="",
        help="comma-separated front-ends (scene,pose,audio,face) to run with deterministic "
        "random weights instead of pretrained ones (tests, demos; recorded in every row)",
    )
    p.add_argument("--weights-dir", default=None, help="staged weights (default $EMOTIW_WEIGHTS)")
    p.add_argument(
        "--lr",
        default="",
        help="per-head Adam learning rates overriding the paper's, e.g. audio=1e-3,scene=1e-3",
    )


def modality_configs(args: argparse.Namespace) -> Any:
    """`features.ModalityConfigs` from the `add_model_args` flags."""
    from emotiw.features import ModalityConfigs
    from emotiw.modalities import audio, face, pose, scene

    random = {m for m in args.random_init.split(",") if m}
    unknown = random - {"scene", "pose", "audio", "face"}
    if unknown:
        raise ValueError(f"--random-init: unknown front-ends {sorted(unknown)}")

    def choice(name: str) -> str:
        return "random-init" if name in random else "pretrained"

    lrs: dict[str, float] = {}
    for item in filter(None, getattr(args, "lr", "").split(",")):
        name, _, value = item.partition("=")
        if name not in ("scene", "pose", "audio", "face") or not value:
            raise ValueError(f"--lr: expected modality=value, got {item!r}")
        lrs[name] = float(value)

    def extra(name: str) -> dict[str, float]:
        return {"lr": lrs[name]} if name in lrs else {}

    return ModalityConfigs(
        modalities=args.modalities,
        scene=scene.Config(backbone=args.scene_backbone, weights=choice("scene"), **extra("scene")),
        pose=pose.Config(input_size=args.pose_input_size, weights=choice("pose"), **extra("pose")),
        audio=audio.Config(features=args.audio_features, weights=choice("audio"), **extra("audio")),
        face=face.Config(fer_weights=choice("face"), **extra("face")),
    )


def _weights(args: argparse.Namespace) -> Any:
    from emotiw.weights import WeightsConfig

    return WeightsConfig(weights_dir=args.weights_dir, storage=_storage(args))


def _cmd_extract(args: argparse.Namespace) -> int:
    from emotiw.pipeline import ExtractConfig, run_extract

    cfg = ExtractConfig(
        videos=args.videos,
        output=args.output,
        labels=args.labels,
        configs=modality_configs(args),
        weights=_weights(args),
        storage=_storage(args),
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        skip_existing=not args.no_skip_existing,
    )
    summary = run_extract(cfg, args.address)
    print(summary, flush=True)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from emotiw import fusion
    from emotiw.training import TrainConfig, run_train

    configs = modality_configs(args)
    cfg = TrainConfig(
        features=args.features,
        val_features=args.val_features,
        seed=args.seed,
        configs=configs,
        fusion=fusion.Config(method=args.fusion, modalities=configs.modalities),
        ablation=not args.no_ablation,
        epochs=args.epochs,
        fusion_epochs=args.fusion_epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        use_gpu=args.use_gpu,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        model_name=args.model_name,
        run_dir=args.run_dir,
        storage=_storage(args),
        weights=_weights(args),
    )
    result = run_train(cfg, args.address)
    print(f"registered {result.model_uri} (package {result.package_dir}, run {result.run_id})")
    print("validation accuracy: " + ", ".join(
        f"{name} {s['accuracy']:.3f}" for name, s in result.scores.items()
    ))  # fmt: skip
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from emotiw.pipeline import ScoreConfig, run_score

    cfg = ScoreConfig(
        input=args.input,
        manifest=args.manifest,
        output=args.output,
        model=args.model,
        tracking_uri=args.tracking_uri,
        skip_existing=args.skip_existing,
        retry_errors=args.retry_errors,
        cpu_actors=args.cpu_actors,
        model_actors=args.model_actors,
        gpus_per_model_actor=args.gpus_per_model_actor,
        model_batch_size=args.model_batch_size,
        weights=_weights(args),
        storage=_storage(args),
    )
    print(run_score(cfg, args.address), flush=True)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from emotiw.evaluation import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(
        model=args.model,
        features=args.features,
        output=args.output,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        storage=_storage(args),
    )
    result = run_evaluate(cfg)
    print(result.markdown)
    print(f"written to {result.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emotiw", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-corpus", help="write the synthetic labelled sample corpus")
    p.add_argument("out", help="output directory or s3:// prefix")
    p.add_argument("--n", type=int, default=12, help="number of clips (default 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cue-strength", type=float, default=CorpusConfig.cue_strength)
    p.set_defaults(func=_cmd_sample_corpus)

    p = sub.add_parser("list", help="list video files under a path or s3:// prefix")
    p.add_argument("uri")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("decode", help="decode videos and print a per-clip summary table")
    p.add_argument("uri", help="a video, a directory or an s3:// prefix")
    p.add_argument("--labels", default=None, help="VGAF label file to show each clip's label")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("extract", help="extract every modality's features into the feature table")
    p.add_argument("--videos", required=True, help="directory or s3:// prefix of videos")
    p.add_argument("--labels", default=None, help="VGAF label file (path or s3://)")
    p.add_argument("--output", required=True, help="feature table directory (path or s3://)")
    p.add_argument("--actors", type=int, default=2, help="CPU actor pool size")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--no-skip-existing", action="store_true", help="re-extract every clip")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local/auto)")
    add_model_args(p)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("train", help="train each head and the fusion (Ray Train, MLflow)")
    p.add_argument("--features", required=True, help="training feature table")
    p.add_argument("--val-features", default=None, help="validation table (default: split)")
    p.add_argument("--fusion", choices=("fc", "vae", "soft", "hard", "weighted"), default="fc")
    p.add_argument("--no-ablation", action="store_true", help="skip the leave-one-out fusions")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--fusion-epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default=None, help="MLflow (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="emotiw")
    p.add_argument("--model-name", default="emotiw", help="registered model name")
    p.add_argument("--run-dir", default="runs/train")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local/auto)")
    add_model_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("score", help="score clips into the partitioned scores table (main job)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="directory or s3:// prefix of videos")
    source.add_argument("--manifest", help="text file of video URLs, one per line")
    p.add_argument("--output", required=True, help="scores table root (path or s3://)")
    p.add_argument("--model", required=True, help="models:/name/version|latest or a package dir")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default $MLFLOW_TRACKING_URI)")
    p.add_argument(
        "--skip-existing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score only clips whose (id, etag) is not in the output yet (default: on)",
    )
    p.add_argument("--retry-errors", action="store_true", help="rescore earlier error rows")
    p.add_argument("--cpu-actors", type=int, default=0, help="max extract actors (0: auto)")
    p.add_argument("--model-actors", type=int, default=1)
    p.add_argument(
        "--gpus-per-model-actor", type=float, default=-1, help="-1: 1 if the cluster has GPUs"
    )
    p.add_argument("--model-batch-size", type=int, default=8)
    p.add_argument("--weights-dir", default=None, help="staged weights (default $EMOTIW_WEIGHTS)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local/auto)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("evaluate", help="metrics tables of a model on a feature table")
    p.add_argument("--model", required=True, help="models:/name/version or a package dir")
    p.add_argument("--features", required=True, help="labelled feature table")
    p.add_argument("--output", default="runs/evaluate")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="emotiw")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="run the main job on the embedded default (local files)")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--n", type=int, default=18, help="training clips to write")
    p.add_argument("--n-drop", type=int, default=8, help="new clips to score")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (EmotiwError, ValueError) as exc:
        print(f"emotiw {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
