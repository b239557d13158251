"""Shared fixtures: tiny media with known content, a real S3 endpoint on loopback, the corpus.

Lossless clips (FFV1 in Matroska, RGB pixel format, PCM audio) make sampling exactly
checkable: frame i is a flat colour with red = i % 256, green = 32 * (i // 256) and
blue = 255 - i % 256, so the decoded pixel says which frame was sampled, and the audio is a
pure tone of known frequency.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from emotiw.config import StorageConfig

TEST_KEY = "emotiw-test-key"
TEST_SECRET = "emotiw-test-secret-9f1c2e"


def frame_colour(i: int) -> tuple[int, int, int]:
    """The flat RGB colour painted into frame `i` of a fixture clip."""
    return (i % 256, 32 * (i // 256), 255 - i % 256)


def index_from_pixel(rgb: np.ndarray) -> int:
    """Inverse of `frame_colour` for one decoded pixel."""
    return int(rgb[0]) + 256 * (int(rgb[1]) // 32)


def write_clip(
    path: Path,
    *,
    n_frames: int = 150,
    fps: int = 25,
    size: tuple[int, int] = (480, 320),
    tone_hz: float | None = 1000.0,
    audio_rate: int = 48_000,
    channels: int = 1,
    audio_s: float | None = None,
    video: bool = True,
) -> Path:
    """Write a lossless clip with numbered frames and (optionally) a pure tone."""
    import av

    width, height = size
    with av.open(str(path), "w", format="matroska") as out:
        vstream = None
        if video:
            vstream = out.add_stream("ffv1", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "bgr0"
        astream = None
        if tone_hz is not None:
            layout = "mono" if channels == 1 else "stereo"
            astream = out.add_stream("pcm_s16le", rate=audio_rate, layout=layout)
        if vstream is not None:
            for i in range(n_frames):
                frame = np.empty((height, width, 3), dtype=np.uint8)
                frame[...] = frame_colour(i)
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(vstream.encode(None))
        if astream is not None:
            seconds = audio_s if audio_s is not None else n_frames / fps
            t = np.arange(round(seconds * audio_rate)) / audio_rate
            mono = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
            interleaved = np.repeat(mono[:, None], channels, axis=1).reshape(1, -1)
            layout = "mono" if channels == 1 else "stereo"
            for start in range(0, len(mono), 1024):
                piece = interleaved[:, start * channels : (start + 1024) * channels]
                piece = np.ascontiguousarray(piece)
                aframe = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
                aframe.sample_rate, aframe.pts = audio_rate, start
                out.mux(astream.encode(aframe))
            out.mux(astream.encode(None))
    return path


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_clip("name.mkv", n_frames=..., ...)`` -> path of a lossless clip."""

    def make(name: str = "clip.mkv", **kwargs: object) -> Path:
        return write_clip(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six clips of the synthetic sample corpus (seed 7), shared by the session."""
    from emotiw.corpus import write_sample_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(str(out), 6, seed=7)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    args: list[str],
    health_url: str,
    name: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[None]:
    """Run a server process until `health_url` answers; stop it afterwards."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(health_url, timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto_server) on 127.0.0.1 for the whole session."""
    port = _free_port()
    server = Path(sys.executable).parent / "moto_server"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    url = f"http://127.0.0.1:{port}"
    with serve([str(server), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/",
               "moto_server", env):  # fmt: skip
        yield url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, local artifact root) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    with serve(args, url + "/health", "mlflow server"):
        yield url


@pytest.fixture(scope="session")
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """What a job subprocess needs to reach the test S3 endpoint (the standard AWS variables)."""
    return {
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "AWS_ACCESS_KEY_ID": TEST_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
    }


@pytest.fixture
def s3_storage(s3_endpoint: str) -> StorageConfig:
    return StorageConfig(endpoint_url=s3_endpoint, key=TEST_KEY, secret=TEST_SECRET)


@pytest.fixture
def s3_bucket(s3_storage: StorageConfig) -> str:
    """A fresh, empty bucket; returns its ``s3://name`` URL."""
    from emotiw.storage import fsspec_filesystem

    name = f"emotiw-{uuid.uuid4().hex[:12]}"
    fs, _ = fsspec_filesystem(f"s3://{name}", s3_storage)
    fs.mkdir(name)
    return f"s3://{name}"
