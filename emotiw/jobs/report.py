"""Looking at a scores table: a video's timeline as a PNG (`emotiw timeline`) and a run report,
one self-contained HTML page per scores table (`emotiw report`).

Both read the tables as a query would: each video's current row (newest `scored_at`) and, for
a timeline, each window's current row in the windows table beside it. The pictures are
matplotlib PNGs embedded in the page as data URLs, so the page is one file to mail or attach
to a ticket, and it runs no script.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from emotiw.core.config import CLASS_NAMES, StorageConfig

_COLOURS = {"positive": "#2e7d32", "neutral": "#9e9e9e", "negative": "#c62828"}


@dataclass(frozen=True)
class TimelineConfig:
    """A video's timeline as a PNG.

    Attributes:
        output: the scores table (the windows table is read from beside it, as the job
            wrote it: ``<output>-details/windows``, or `details_output`).
        uri: the video, as its rows name it (its URL).
        png: where the picture goes.
        details_output: where the job put its detail tables (``auto``: beside `output`).
    """

    output: str
    uri: str
    png: str
    details_output: str = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass(frozen=True)
class ReportConfig:
    """A run report: one self-contained HTML page for a scores table.

    Attributes:
        output: the scores table.
        html: where the page goes.
        top: videos in each of the "longest" and "most negative" lists, with their timelines.
        details_output: where the job put its detail tables (``auto``: beside `output`).
    """

    output: str
    html: str
    top: int = 5
    details_output: str = "auto"
    storage: StorageConfig = field(default_factory=StorageConfig)


def _current(table: Any, keys: list[str]) -> list[dict[str, Any]]:
    """Rows of a pyarrow table, the newest `scored_at` of each `keys` value."""
    newest: dict[tuple, dict[str, Any]] = {}
    for row in table.to_pylist():
        key = tuple(row[k] for k in keys)
        if key not in newest or (row["scored_at"] or 0) > (newest[key]["scored_at"] or 0):
            newest[key] = row
    return list(newest.values())


def _read(url: str, storage: StorageConfig, schema: Any, where: Any = None) -> Any:
    import pyarrow.dataset as ds

    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.chunks import data_files

    fs, root = arrow_filesystem(url, storage)
    files = data_files(fs, root)
    if not files:
        return schema.empty_table()
    return ds.dataset(files, schema=schema, filesystem=fs, format="parquet").to_table(filter=where)


def _windows_url(output: str, details_output: str) -> str:
    from emotiw.tables.details import detail_root

    root = detail_root(details_output, output)
    if root is None:
        raise ValueError(f"{output} has no detail tables beside it, so no windows table")
    return f"{root}/windows"


def read_timeline(
    output: str, uri: str, storage: StorageConfig, details_output: str = "auto"
) -> list[dict[str, Any]]:
    """The current window rows of `uri` (its newest version), in order."""
    import pyarrow.dataset as ds

    from emotiw import modalities
    from emotiw.tables.schema import window_schema

    schema = window_schema(modalities.specs())
    url = _windows_url(output, details_output)
    rows = _current(_read(url, storage, schema, ds.field("uri") == uri), ["window_index"])
    if rows:  # a changed file's older windows are another version's
        etag = max(rows, key=lambda r: r["scored_at"] or 0)["etag"]
        rows = [r for r in rows if r["etag"] == etag]
    return sorted(rows, key=lambda r: r["window_index"])


def timeline_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Class probabilities over time (error windows shaded), faces and people per window."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2]})  # fmt: skip
    ok = [r for r in rows if r["error"] is None]
    for c in CLASS_NAMES:
        xs = [x for r in ok for x in (r["start_s"], r["end_s"])]
        ys = [r[f"prob_{c}"] for r in ok for _ in (0, 1)]
        top.plot(xs, ys, color=_COLOURS[c], label=c, linewidth=1.6)
    for r in rows:
        if r["error"] is not None:
            top.axvspan(r["start_s"], r["end_s"], color="#ffcdd2", label="_error")
    failed = sum(r["error"] is not None for r in rows)
    top.set_ylim(0, 1)
    top.set_ylabel("probability")
    top.set_title(title + (f"  ({failed} error windows shaded)" if failed else ""), fontsize=10)
    top.legend(loc="upper right", fontsize=8, ncol=3)
    halves = [(r["end_s"] - r["start_s"]) / 2 for r in rows]  # faces left, people right
    for side, column, colour in ((0.5, "n_faces", "#1565c0"), (1.5, "n_people", "#ef6c00")):
        xs = [r["start_s"] + side * h for r, h in zip(rows, halves, strict=True)]
        values = [r.get(column) or 0 for r in rows]
        bottom.bar(xs, values, width=halves, color=colour, label=column.removeprefix("n_"))
    bottom.set_ylim(0, max([1] + [r.get(c) or 0 for r in rows for c in ("n_faces", "n_people")]))
    bottom.set_ylabel("per window")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _png(fig: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def run_timeline(cfg: TimelineConfig) -> str:
    """Write `cfg.uri`'s timeline to `cfg.png`; returns a one-line summary."""
    from emotiw.core.errors import EmotiwError
    from emotiw.io.storage import write_bytes

    rows = read_timeline(cfg.output, cfg.uri, cfg.storage, cfg.details_output)
    if not rows:
        raise EmotiwError("not_found", f"{cfg.uri}: no windows in the windows table of "
                          f"{cfg.output}")  # fmt: skip
    write_bytes(cfg.png, _png(timeline_figure(rows, cfg.uri)), cfg.storage)
    failed = sum(r["error"] is not None for r in rows)
    return f"{cfg.uri}: {len(rows)} windows ({failed} errors) -> {cfg.png}"


def run_report(cfg: ReportConfig) -> str:
    """Write the report page of the scores table `cfg.output`; returns a one-line summary."""
    from emotiw import modalities
    from emotiw.io.storage import write_bytes
    from emotiw.tables.schema import score_schema

    videos = _current(_read(cfg.output, cfg.storage, score_schema(modalities.specs())), ["uri"])
    ok = [v for v in videos if v["error"] is None]
    mix = Counter(v["predicted"] for v in ok)
    reasons = Counter(v["error_reason"] for v in videos if v["error"] is not None)
    longest = sorted(ok, key=lambda v: -(v["duration_s"] or 0))[: cfg.top]
    negative = sorted(ok, key=lambda v: -(v["prob_negative"] or 0))[: cfg.top]
    parts = [f"<h1>Scores of {html.escape(cfg.output)}</h1>",
             f"<p>{len(videos)} videos: {len(ok)} scored, {len(videos) - len(ok)} errors.</p>",
             "<h2>Class mix</h2>",
             _html_table(("class", "videos", "share"),
                         [(c, mix[c], f"{mix[c] / max(len(ok), 1):.0%}") for c in CLASS_NAMES]),
             "<h2>Error reasons</h2>",
             _html_table(("reason", "videos"), sorted(reasons.items())) if reasons
             else "<p>none</p>"]  # fmt: skip
    for title, chosen in (("Longest videos", longest), ("Most negative videos", negative)):
        parts.append(f"<h2>{title}</h2>")
        for v in chosen:
            parts.append(_video_section(v, cfg))
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>emotiw '
        f"report</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    write_bytes(cfg.html, page.encode(), cfg.storage)
    return f"{len(videos)} videos ({len(ok)} scored) -> {cfg.html}"


def _video_section(video: dict[str, Any], cfg: ReportConfig) -> str:
    n = video["n_windows"] or 1
    facts = (f"{video['duration_s'] or 0:.0f} s, {n} window{'s' * (n > 1)}, coverage "
             f"{video['coverage'] if video['coverage'] is not None else 1:.0%}, predicted "
             f"{video['predicted']} (negative {video['prob_negative']:.2f})")  # fmt: skip
    out = f"<h3>{html.escape(video['uri'])}</h3><p>{html.escape(facts)}</p>"
    try:
        rows = read_timeline(cfg.output, video["uri"], cfg.storage, cfg.details_output)
    except ValueError:
        rows = []
    if rows:
        data = base64.b64encode(_png(timeline_figure(rows, video["video_id"]))).decode()
        out += f'<img alt="timeline of {html.escape(video["video_id"])}" ' \
               f'src="data:image/png;base64,{data}">'  # fmt: skip
    return out


def _html_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}"
        "img{max-width:100%;border:1px solid #eee}")  # fmt: skip
