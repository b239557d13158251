"""The commands that look at inputs and outputs without running a job: `decode` (what the
decoder makes of some videos), `timeline` (a video's timeline from the tables, as a PNG) and
`report` (a scores table's run report, one self-contained HTML page)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from emotiw.cli import flags
from emotiw.cli.modality_flags import storage_config
from emotiw.core.config import CLASS_NAMES, MediaConfig, StorageConfig


def _decode_summary(
    uris: Sequence[str],
    cfg: MediaConfig,
    storage: StorageConfig | None = None,
    labels: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Decode each clip; one summary row per clip, failures as rows with `error` set."""
    from emotiw.core.errors import DecodeError
    from emotiw.io.media import decode
    from emotiw.io.storage import video_id

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


def _format_table(rows: Sequence[dict[str, Any]]) -> str:
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


def _cmd_decode(args: argparse.Namespace) -> int:
    from emotiw.io.labels import read_labels
    from emotiw.io.storage import list_videos

    storage = storage_config(args)
    uris = list_videos(args.uri, storage)
    labels = read_labels(args.labels, storage) if args.labels else None
    media = MediaConfig(**flags.given(args, MediaConfig, "media__"))
    rows = _decode_summary(uris, media, storage, labels)
    print(_format_table(rows))
    failed = sum(bool(r["error"]) for r in rows)
    print(f"\n{len(rows)} clips: {len(rows) - failed} decoded, {failed} failed")
    return 0


def _cmd_timeline(args: argparse.Namespace) -> int:
    from emotiw.jobs.report import TimelineConfig, run_timeline

    print(run_timeline(TimelineConfig(**flags.given(args, TimelineConfig),
                                      storage=storage_config(args))))  # fmt: skip
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from emotiw.jobs.report import ReportConfig, run_report

    print(run_report(ReportConfig(**flags.given(args, ReportConfig), storage=storage_config(args))))
    return 0


def add_parsers(sub: Any) -> None:
    """The looking commands' parsers, on the command line's subparsers."""
    from emotiw.jobs.report import ReportConfig, TimelineConfig

    p = sub.add_parser("decode", help="decode videos and print a per-clip summary table")
    p.add_argument("uri", help="a video, a directory or an s3:// prefix")
    p.add_argument("--labels", default=None, help="VGAF label file to show each clip's label")
    flags.add_fields(p.add_argument_group("decoding"), MediaConfig, "media-", dest_prefix="media__")
    p.set_defaults(func=_cmd_decode)
    for name, cls, func, text in (
        ("timeline", TimelineConfig, _cmd_timeline, "a video's timeline from the tables, as PNG"),
        ("report", ReportConfig, _cmd_report, "a scores table's run report, one HTML page"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        flags.add_fields(p, cls)
        p.set_defaults(func=func)
