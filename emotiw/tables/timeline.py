"""A video's row from its windows' rows (pure: dicts in, a dict out).

A clip (one window) keeps its window's row as it is, so its scores are what they always were.
A longer video's probabilities are the duration-weighted mean of its scored windows' (for the
fusion and for each modality's head, over the windows where that head had input): a window is
a sample of the video's time, so a short last window counts for its length and the mean is the
sentiment of an average second. The class is the mean's most probable one. Counts (faces,
people) are summed over the windows, `has_audio` is any window's, and `n_frames` is the mean
sampled frames per scored window (of 12). `coverage` is the share of the video's duration the
scored windows cover; `coverage_note` says why the rest is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from emotiw.core.config import CLASS_NAMES

# Columns a video's row takes from its newest window as they are (the run, model and file).
_SAME = ("video_id", "uri", "etag", "size_bytes", "model_uri", "model_name", "model_version",
         "fusion", "weights", "model_device", "code_version", "run_id", "scored_at")  # fmt: skip
_WINDOW_ONLY = ("window_index", "start_s", "end_s", "video_duration_s")


def _families(columns: Sequence[str]) -> list[str]:
    """Prefixes of the probability families in a row: "" (the fusion) and "<modality>_"."""
    first = f"prob_{CLASS_NAMES[0]}"
    return [c[: -len(first)] for c in columns if c.endswith(first)]


def _mean(windows: list[dict[str, Any]], prefix: str) -> list[float] | None:
    """Duration-weighted mean of a family's probabilities over windows that have them."""
    names = [f"{prefix}prob_{c}" for c in CLASS_NAMES]
    have = [w for w in windows if w.get(names[0]) is not None]
    total = sum(w["end_s"] - w["start_s"] for w in have)
    if not have or total <= 0:
        return None
    return [sum(w[n] * (w["end_s"] - w["start_s"]) for w in have) / total for n in names]


def _covered_s(spans: list[tuple[float, float]]) -> float:
    """Seconds of the union of (start, end) spans (overlapping windows count once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def video_row(
    windows: list[dict[str, Any]], stats: dict[str, str], max_video_s: float
) -> dict[str, Any]:
    """The scores-table row of one video from all its windows' rows (newest per window).

    Args:
        windows: windows-table rows (dicts), one per window of the video, any order.
        stats: each modality stat column -> its type (bool: any window; numbers: summed).
        max_video_s: the cap the windows were planned with (for `coverage_note`).
    """
    windows = sorted(windows, key=lambda w: w["window_index"])
    newest = max(windows, key=lambda w: w.get("scored_at") or 0)
    n = int(windows[0]["n_windows"] or 1)
    if n == 1:  # a clip: its window's row, as a clip's row always was
        row = {k: v for k, v in windows[0].items() if k not in _WINDOW_ONLY}
        ok = row.get("error") is None
        row.update(n_windows=1, coverage=1.0 if ok else 0.0, coverage_note=None)
        row.update(_extremes(windows if ok else []))
        return row
    ok = [w for w in windows if w.get("error") is None]
    duration = float(windows[0].get("video_duration_s") or 0.0)
    row: dict[str, Any] = {k: newest.get(k) for k in _SAME}
    row.update(content_sha256=None, duration_s=duration, n_windows=n)
    for prefix in _families(list(windows[0])):
        mean = _mean(ok, prefix)
        for c, p in zip(CLASS_NAMES, mean or [None] * len(CLASS_NAMES), strict=True):
            row[f"{prefix}prob_{c}"] = p
        row[f"{prefix}predicted"] = None if mean is None else CLASS_NAMES[mean.index(max(mean))]
    for name, kind in stats.items():
        values = [w[name] for w in ok if w.get(name) is not None]
        row[name] = (any(values) if kind == "bool" else sum(values)) if values else None
    row["n_frames"] = round(sum(w["n_frames"] or 0 for w in ok) / len(ok)) if ok else 0
    row["attempts"] = max(int(w.get("attempts") or 1) for w in windows)
    failed = [w for w in windows if w.get("error") is not None]
    if ok:
        row.update(error=None, error_reason=None)
        row["retryable"] = True if any(w.get("retryable") for w in failed) else None
    else:
        row.update(error=failed[0]["error"], error_reason=failed[0]["error_reason"])
        row["retryable"] = any(bool(w.get("retryable")) for w in failed)
    scored = _covered_s([(w["start_s"], w["end_s"]) for w in ok])
    row["coverage"] = min(1.0, scored / duration) if duration > 0 else (1.0 if ok else 0.0)
    row["coverage_note"] = _note(failed, n, duration, max_video_s) if row["coverage"] < 1 else None
    row.update(_extremes(ok))
    return row


def _extremes(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The most positive and the most negative scored window, and where they start."""
    out: dict[str, Any] = {}
    for c in ("positive", "negative"):
        best = max(ok, key=lambda w: w[f"prob_{c}"]) if ok else None
        out[f"most_{c}_window"] = None if best is None else best.get("window_index", 0)
        out[f"most_{c}_start_s"] = None if best is None else best.get("start_s", 0.0)
    return out


def _note(failed: list[dict[str, Any]], n: int, duration: float, max_video_s: float) -> str:
    """Why part of a video is not scored: failed windows by reason, the part past the cap."""
    parts = []
    if failed:
        reasons = Counter(w["error_reason"] for w in failed)
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        parts.append(f"{len(failed)} of {n} windows failed ({why})")
    if duration > max_video_s:
        parts.append(
            f"{duration - max_video_s:.0f} s past --max-video-s {max_video_s:g} not scored"
        )
    return "; ".join(parts) or "the last fraction of a second holds no window"
