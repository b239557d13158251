"""Fixtures shared by the session: tiny media, real S3 and MLflow servers on loopback, the
sample corpus, one Ray cluster for every job of the session (in process and in subprocesses),
a weights cache of the session's own. Helpers are in `helpers`.

Tiers: every test belongs to exactly one of the tiers declared in pyproject.toml's markers
(a marker whose description starts with "tier"): `unit` (the default, assigned here), `e2e`
or `nightly`. `make test-fast` runs unit, `make test` unit + e2e, `make test-all` all three.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emotiw.core.config import StorageConfig
from helpers import BIN, SESSION, TEST_KEY, TEST_SECRET, RayNode, job_env, serve, write_clip

TESTS = str(Path(__file__).resolve().parent)
TIERS_SEEN = pytest.StashKey[dict[str, list[str]]]()


def tiers(config: pytest.Config) -> list[str]:
    """The tier markers, as pyproject.toml declares them (description "tier: ...")."""
    names = []
    for line in config.getini("markers"):
        name, _, doc = line.partition(":")
        if doc.strip().startswith("tier"):
            names.append(name.strip())
    return names


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the check sees every collected test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test without a tier marker is a unit test; record each test's tier markers for
    `test_tiers`, which fails on a test with more than one."""
    names = tiers(config)
    seen = config.stash.setdefault(TIERS_SEEN, {})
    docs = {}
    for item in items:
        marked = [m.name for m in item.iter_markers() if m.name in names]
        seen[item.nodeid] = marked
        docs[item.nodeid] = getattr(getattr(item, "obj", None), "__doc__", None) or ""
        if not marked:
            item.add_marker(names[0])
    report = os.environ.get("EMOTIW_TIER_REPORT")  # test_tiers' collection of the whole suite
    if report:
        tiers_of = {n: t or [names[0]] for n, t in seen.items()}
        Path(report).write_text(json.dumps({"tiers": tiers_of, "docs": docs}))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A test module that defines a plug-in modality registers it on import, as a plug-in
    package does (Ray workers import the module by name); collecting it must not put it in
    every other test's registry (a job in this process would then expect its columns), so
    it leaves here, and that module registers it for its own tests (a module fixture)."""
    from emotiw import modalities

    for name in modalities.names():
        if name not in modalities.BUILTIN:
            modalities.unregister(name)


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A weights cache (converted weights, exported backends) of this session's own: runs do
    not share state through ``~/.cache/emotiw``, and two sessions never race on one file."""
    cache = tmp_path_factory.mktemp("emotiw-cache")
    before = os.environ.get("EMOTIW_CACHE")
    os.environ["EMOTIW_CACHE"] = str(cache)
    yield cache
    _restore("EMOTIW_CACHE", before)


def _restore(var: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(var, None)
    else:
        os.environ[var] = value


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored() -> Iterator[None]:
    """`mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in this process's environment,
    which every later job subprocess would inherit (a demo would find another test's store):
    put both back after each test that moved them."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before and "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable too
    _restore("MLFLOW_TRACKING_URI", before)


@pytest.fixture(scope="session")
def ray_cluster(weights_cache: Path) -> Iterator[RayNode]:
    """One Ray head for the session (2 CPUs, dashboard for `ray job submit`), started once:
    the jobs of e2e and nightly tests (subprocesses through `helpers.job_env`, in-process
    through `helpers.run_here` and `local_ray`) connect to it instead of booting a Ray of
    their own (~5 s each, and a killed driver's agent could hold a port). Its workers have
    the tests folder on their path, so a modality defined in a test module loads there as a
    plug-in package would, and the S3 test server's credentials in their environment, as a
    cluster's nodes have theirs (a job passes its endpoint, never its credentials). Tests
    that need a cluster of their own start one with `helpers.RayNode`."""
    env = job_env({"PYTHONPATH": os.pathsep.join(
        p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)})  # fmt: skip
    env.update(AWS_ACCESS_KEY_ID=TEST_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    node = RayNode("--head", "--num-cpus=2", "--num-gpus=0", head=True, env=env)
    SESSION["ray_address"] = node.address
    try:
        yield node
    finally:
        SESSION["ray_address"] = None
        node.stop()


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_clip("name.mkv", n_frames=..., ...)`` -> path of a lossless clip."""

    def make(name: str = "clip.mkv", **kwargs: object) -> Path:
        return write_clip(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six clips of the synthetic sample corpus (seed 7), shared by the session."""
    from emotiw.io.corpus import write_sample_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(str(out), 6, seed=7)
    return out


@pytest.fixture(scope="session")
def smoke_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One packaged model of seeded random-init heads over the cpu-smoke modalities (named
    ``emotiw-test-model``), shared by every test that only reads it."""
    from helpers import make_package, smoke_configs

    folder = tmp_path_factory.mktemp("model") / "emotiw-test-model"
    return make_package(folder, smoke_configs())


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto_server) on 127.0.0.1 for the whole session."""
    server = str(Path(sys.executable).parent / "moto_server")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET}
    with serve(lambda port: [server, "-H", "127.0.0.1", "-p", str(port)], "/moto-api/",
               "moto_server", env) as url:  # fmt: skip
        yield url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite store, local artifact root) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow")
    mlflow = str(Path(sys.executable).parent / "mlflow")

    def args(port: int) -> list[str]:
        return [
            mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ]  # fmt: skip

    with serve(args, "/health", "mlflow server") as url:
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
    from emotiw.io.storage import fsspec_filesystem

    name = f"emotiw-{uuid.uuid4().hex[:12]}"
    fs, _ = fsspec_filesystem(f"s3://{name}", s3_storage)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(autouse=True)
def _jobs_on_the_session_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """e2e and nightly tests run their jobs on the session's cluster (a module fixture that
    runs jobs asks for `ray_cluster` itself: it is set up before this one); a unit test's
    commands see no cluster, whatever ran before it."""
    if any(request.node.get_closest_marker(tier) for tier in tiers(request.config)[1:]):
        request.getfixturevalue("ray_cluster")
        yield
        return
    address, SESSION["ray_address"] = SESSION["ray_address"], None
    try:
        yield
    finally:
        SESSION["ray_address"] = address


@pytest.fixture(scope="module")
def local_ray(ray_cluster: RayNode) -> Iterator[None]:
    """This process connected to the session's Ray cluster, for a module's in-process jobs
    (disconnected after the module; the cluster stays up)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
