"""labels: VGAF label files round trip and reject bad files with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotiw.core.config import CLASS_NAMES
from emotiw.core.errors import LabelError
from emotiw.io.labels import _format_labels, _parse_labels, read_labels, write_labels


def test_vgaf_values_map_to_class_order() -> None:
    labels = _parse_labels("Vid_name Label\n10_1 1\n10_2 2\n11_1.mp4 3\n")
    assert labels == {"10_1": 0, "10_2": 1, "11_1": 2}
    assert [CLASS_NAMES[c] for c in labels.values()] == ["positive", "neutral", "negative"]


def test_round_trip_local(tmp_path: Path) -> None:
    labels = {"a.mp4": 0, "b.mp4": 2, "c.mp4": 1}
    write_labels(str(tmp_path / "labels.txt"), labels)
    text = (tmp_path / "labels.txt").read_text()
    assert text.splitlines() == ["Vid_name Label", "a.mp4 1", "b.mp4 3", "c.mp4 2"]
    assert read_labels(str(tmp_path / "labels.txt")) == {"a": 0, "b": 2, "c": 1}


def test_round_trip_s3(s3_bucket, s3_storage) -> None:
    url = f"{s3_bucket}/labels/Train_labels.txt"
    write_labels(url, {"x_1": 1, "x_2": 0}, s3_storage)
    assert read_labels(url, s3_storage) == {"x_1": 1, "x_2": 0}


def test_tolerates_blank_lines_crlf_and_bom() -> None:
    text = "\ufeffVid_name Label\r\n\r\n1_1 2\r\n  \r\n1_2 1\r\n"
    assert _parse_labels(text) == {"1_1": 1, "1_2": 0}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("Vid_name Label\na 1\nb 4\n", 3, "unknown label '4'"),
        ("Vid_name Label\na 1\nb x\n", 3, "unknown label 'x'"),
        ("Vid_name Label\na 1\nb 0\n", 3, "unknown label '0'"),
        ("Vid_name Label\na 1\na.mp4 2\n", 3, "duplicate name 'a.mp4' (first on line 2)"),
        ("Vid_name Label\na 1 extra\n", 2, "expected '<name> <label>'"),
        ("Vid_name Label\na\n", 2, "expected '<name> <label>'"),
        ("name label score\na 1\n", 1, "expected header"),
        ("a 1\nb 2\n", 1, "expected header"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "bad_labels.txt"
    path.write_text(text)
    with pytest.raises(LabelError) as info:
        read_labels(str(path))
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert words in message


def test_empty_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(LabelError, match="empty label file"):
        read_labels(str(tmp_path / "empty.txt"))
    (tmp_path / "video.txt").write_bytes(b"\x00\x00\x00\x18ftypmp42\xff\xfe\xfd")
    with pytest.raises(LabelError, match="not a UTF-8 text file"):
        read_labels(str(tmp_path / "video.txt"))


def test_format_rejects_bad_values() -> None:
    with pytest.raises(LabelError, match="class index 3"):
        _format_labels({"a": 3})
    with pytest.raises(LabelError, match="whitespace"):
        _format_labels({"a b": 0})
