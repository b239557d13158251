"""Learnability under ``--preset paper`` (issue 17): the deployed models' layers and training
settings (`emotiw.modalities.paper`: each model's epochs, batch size, checkpoint metric and
early stopping; FC fusion on out-of-fold head outputs) learn the synthetic corpus's planted
cues, run as a user would: extract, then train, as job subprocesses on the session's Ray cluster.

One extraction (24 training, 36 held-out clips; scene, face and audio), two train jobs:
- scene and face with FC fusion on out-of-fold outputs, two stacking folds instead of the
  preset's 5 (each fold trains every head once more, ~1 min each here; with 5 folds the test
  took 17 min and passed with the same bars). The scene head runs on ImageNet
  EfficientNet-Lite0 maps in place of ImageNet ResNet-50 (the only ImageNet backbone that
  installs offline); on random-init ResNet-50 maps the deployed head does not learn within the
  paper's 5 epochs.
- audio alone (random-init OpenL3, whose weights do not install offline) at the paper's Adam
  4.4e-5 for up to 4,000 epochs with early stopping after 300: ~1,100 epochs, ~3 min here
  (reporting to Ray Train every epoch made each epoch 1.7x longer:
  `TrainConfig.report_interval_s`).
README, "Learnability under the paper preset"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from emotiw.io.corpus import write_sample_corpus
from emotiw.models.packaging import load_model
from helpers import run_job

# Two extract jobs and two train jobs at the paper's schedules: ~14 min, nightly. Their cheaper
# siblings in make test run the same jobs and code paths at the cpu-smoke preset's sizes.
pytestmark = pytest.mark.nightly

STAND_INS = ["--scene-backbone", "efficientnet-lite0", "--random-init", "audio"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory, ray_cluster: object) -> dict[str, str]:
    """Feature tables (train: 24 clips, val: 36) of the paper preset's scene, face and audio.
    36 held-out clips, not 12: the accuracy of a head that reads its cue (~0.87) then has a
    standard error of ~0.06 instead of ~0.13, so the 0.5 bar sits well clear of both it and
    chance (1/3) for every seed (with 12, one seed of the audio head measured exactly 0.50)."""
    root = tmp_path_factory.mktemp("paper")
    tables = {}
    for split, n, seed in (("train", 24, 0), ("val", 36, 1)):
        videos = root / f"{split}_videos"
        write_sample_corpus(str(videos), n, seed=seed)
        tables[split] = str(root / f"features_{split}")
        stdout = run_job(
            "extract", "--videos", str(videos), "--labels", str(videos / "labels.txt"),
            "--output", tables[split], "--preset", "paper", "--modalities", "scene,face,audio",
            *STAND_INS,
        ).stdout  # fmt: skip
        assert f"{n} clips listed, 0 already done, {n} extracted, 0 errors" in stdout
    return tables


def train(tables: dict[str, str], run: Path, *args: str) -> str:
    """The train job under ``--preset paper`` on `tables`; its stdout."""
    return run_job(
        "train", "--features", tables["train"], "--val-features", tables["val"],
        "--preset", "paper", "--no-ablation", "--run-dir", str(run), *STAND_INS, *args,
        timeout=1200,
    ).stdout  # fmt: skip


def runs_by_name(run: Path) -> tuple[Any, dict[str, Any]]:
    """The train job's MLflow client and its runs by name."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("emotiw").experiment_id])
    return client, {r.info.run_name: r for r in runs}


@pytest.mark.timeout(1500)
def test_paper_preset_learns_the_scene_and_face_cues(tables, tmp_path: Path) -> None:
    """Scene (the deployed ConvLSTM head on ImageNet maps) and face under the paper's schedules,
    FC fusion on out-of-fold head outputs.
    Sibling in make test:
    tests/test_training.py::test_train_learns_cues_logs_to_mlflow_and_registers
    (the same extract and train jobs, learnability bars, cpu-smoke schedule) and
    tests/test_toy_modality.py::test_extract_train_and_score_with_a_fifth_modality (stacking
    folds and the out-of-fold fusion)."""
    run = tmp_path / "run"
    stdout = train(tables, run, "--modalities", "scene,face", "--stacking-folds", "2")
    # the paper's schedule: scene 5 epochs of 6, face 20 of 32, FC fusion 30
    assert "head-scene epoch 5/5:" in stdout and "head-face epoch 20/20:" in stdout
    assert "fusion-fc epoch 30/30:" in stdout and "head-scene-fold1 epoch 5/5:" in stdout

    client, by_name = runs_by_name(run)
    scene_run = by_name["head:scene"]
    assert scene_run.data.params["scene.backbone"] == "efficientnet-lite0"
    assert scene_run.data.params["scene.pooling"] == "gap"  # the deployed head
    assert {"fusion:fc", "fusion:fc-in-sample"} <= set(by_name)  # out-of-fold and in-sample
    # Held-out accuracy (36 clips, cue strength 0.8: a head reading its cue scores ~0.87,
    # chance 1/3), the bar of the cpu-smoke learnability test in test_training.
    acc = {name: r.data.metrics.get("val_accuracy") for name, r in by_name.items()}
    heads = {h: acc[f"head:{h}"] for h in ("scene", "face")}
    assert min(heads.values()) >= 0.5, (heads, acc)
    assert acc["fusion:fc"] >= max(heads.values()), (heads, acc)
    # the run's val_accuracy is the selected checkpoint's: FC fusion keeps the epoch of highest
    # validation accuracy (Keras' ModelCheckpoint), logged one step past its 30 epochs
    fc_history = client.get_metric_history(by_name["fusion:fc"].info.run_id, "val_accuracy")
    assert max(m.step for m in fc_history) == 30
    assert acc["fusion:fc"] == max(m.value for m in fc_history)

    (package,) = (run / "model").iterdir()  # model/<parent run id>
    model = load_model(package)
    assert "efficientnet-lite0" in model.provenance["scene"]
    assert "sha256:5793" in model.provenance["scene"]


@pytest.mark.timeout(1200)
def test_paper_preset_learns_the_audio_cue(tables, tmp_path: Path) -> None:
    """The deployed audio head on random-init OpenL3 embeddings, the paper's whole schedule.
    Measured with seeds 0 / 1 / 2: 0.75 / 0.67 / 0.50, stopped after 1,154 / 1,086 / 386
    epochs; seed 0, which the test runs, reached 0.67 in the test's own run.
    Sibling in make test: tests/test_fit.py::test_the_deployed_pose_head_learns_a_planted_posture
    (a deployed head under the paper's schedule: early stopping, checkpoint selection)."""
    run = tmp_path / "run"
    stdout = train(tables, run, "--modalities", "audio", "--stacking-folds", "0")
    # up to 4,000 epochs; early stopping on validation loss after 300 without improvement
    stopped = re.search(r"head-audio: best val_accuracy ([\d.]+) at epoch (\d+) .*"
                        r"stopped early after (\d+)", stdout)  # fmt: skip
    assert stopped, stdout[-3000:]
    best_epoch, epochs = int(stopped[2]), int(stopped[3])
    assert 300 < epochs < 4000 and best_epoch <= epochs
    _, by_name = runs_by_name(run)
    audio = by_name["head:audio"]
    assert audio.data.params["audio.normalise"] == "l2"  # the deployed per-step L2
    assert audio.data.params["audio.schedule.patience"] == "300"
    # held-out accuracy of the checkpoint of highest validation accuracy (the deployed rule)
    assert audio.data.metrics["val_accuracy"] == pytest.approx(float(stopped[1]), abs=1e-4)
    assert float(stopped[1]) >= 0.5
    (package,) = (run / "model").iterdir()
    assert "random-init" in load_model(package).provenance["audio"]
