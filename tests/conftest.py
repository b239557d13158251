"""Fixtures shared by the session: tiny media, real S3 and MLflow servers on loopback, the
sample corpus, one Ray runtime for the in-process tests. Helpers are in `helpers`."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emotiw.config import StorageConfig
from helpers import TEST_KEY, TEST_SECRET, free_port, serve, write_clip

TESTS = str(Path(__file__).resolve().parent)


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto_server) on 127.0.0.1 for the whole session."""
    port = free_port()
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
    port = free_port()
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


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray for a module's in-process jobs. Its workers get the tests folder on their
    path, so modalities defined in a test module (registered on import) load there too. Module
    scope: a Ray left running would hold the node agent's port that the `ray start` clusters of
    other tests need."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()
