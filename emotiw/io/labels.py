"""VGAF label files: a ``Vid_name Label`` header, then one ``<name> <1|2|3>`` line per clip.

1=Positive, 2=Neutral, 3=Negative (EmotiW 2020 VGAF). In memory a label is the class index of
`emotiw.core.config.CLASS_NAMES` (0=positive, 1=neutral, 2=negative). Names are matched to videos by
`emotiw.io.storage.video_id` (the file name without extension), whichever form the file uses.
A label file that is wrong in any line is rejected whole, naming the file and line: training
on a silently half-read label file is worse than not training.
"""

from __future__ import annotations

from collections.abc import Mapping

from emotiw.core.config import CLASS_NAMES, CLASS_TO_VGAF_LABEL, VGAF_LABEL_TO_CLASS, StorageConfig
from emotiw.core.errors import LabelError

HEADER = ("Vid_name", "Label")


def _parse_labels(text: str, source: str = "<labels>") -> dict[str, int]:
    """Parse label-file text into ``{video_id: class_index}`` in file order.

    Raises:
        LabelError: missing/wrong header, malformed line, unknown label, duplicate name.
    """
    from emotiw.io.storage import video_id

    lines = text.removeprefix("\ufeff").splitlines()  # a BOM from Windows editors
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise LabelError(f"{source}: empty label file (expected header 'Vid_name Label')")
    header = lines[first].split()
    if [h.lower() for h in header] != [h.lower() for h in HEADER]:
        raise LabelError(
            f"{source}:{first + 1}: expected header 'Vid_name Label', got {lines[first]!r}"
        )
    labels: dict[str, int] = {}
    seen_at: dict[str, int] = {}
    for number, line in enumerate(lines[first + 1 :], start=first + 2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LabelError(f"{source}:{number}: expected '<name> <label>', got {line.strip()!r}")
        name, raw = parts
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value not in VGAF_LABEL_TO_CLASS:
            raise LabelError(
                f"{source}:{number}: unknown label {raw!r} for {name!r} "
                "(expected 1=Positive, 2=Neutral, 3=Negative)"
            )
        vid = video_id(name)
        if vid in labels:
            raise LabelError(
                f"{source}:{number}: duplicate name {name!r} (first on line {seen_at[vid]})"
            )
        labels[vid] = VGAF_LABEL_TO_CLASS[value]
        seen_at[vid] = number
    return labels


def read_labels(url: str, storage: StorageConfig | None = None) -> dict[str, int]:
    """Read a VGAF label file from a path or URL into ``{video_id: class_index}``."""
    from emotiw.io.storage import read_bytes

    raw = read_bytes(url, storage)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelError(f"{url}: not a UTF-8 text file ({exc.reason})") from None
    return _parse_labels(text, source=url)


def _format_labels(labels: Mapping[str, int]) -> str:
    """VGAF text for ``{name: class_index}`` (names written as given)."""
    rows = [" ".join(HEADER)]
    for name, cls in labels.items():
        if cls not in CLASS_TO_VGAF_LABEL:
            raise LabelError(
                f"class index {cls!r} for {name!r} is not one of 0..{len(CLASS_NAMES) - 1}"
            )
        if not name or any(c.isspace() for c in name):
            raise LabelError(f"video name {name!r} is empty or contains whitespace")
        rows.append(f"{name} {CLASS_TO_VGAF_LABEL[cls]}")
    return "\n".join(rows) + "\n"


def write_labels(url: str, labels: Mapping[str, int], storage: StorageConfig | None = None) -> None:
    """Write ``{name: class_index}`` as a VGAF label file to a path or URL."""
    from emotiw.io.storage import write_bytes

    write_bytes(url, _format_labels(labels).encode("utf-8"), storage)
