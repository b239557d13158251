"""Learnability under ``--preset paper`` (issue 17): the deployed models' layers and training
settings (`emotiw.modalities.paper`: each model's epochs, batch size and checkpoint metric; FC
fusion on out-of-fold head outputs) learn the synthetic corpus's planted cues, run as a user
would: extract, then train, as job subprocesses on local Ray. Two stacking folds instead of the
preset's 5: each fold trains every head once more, ~1 min each here (with 5 folds the test took
17 min and passed with the same bars).

Scene and face only. The scene head runs on ImageNet EfficientNet-Lite0 maps in place of
ImageNet ResNet-50 (the only ImageNet backbone that installs offline); on random-init
ResNet-50 maps the deployed head does not learn within the paper's 5 epochs. The audio head,
at the paper's learning rate on random-init OpenL3, needs the paper's schedule of up to 4,000
epochs (~50 min per training here). README, "Learnability under the paper preset"."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotiw.corpus import write_sample_corpus
from emotiw.packaging import load_model
from helpers import run_job

pytestmark = pytest.mark.slow  # two extract jobs and a train job on local Ray: ~10 min

STAND_INS = ["--modalities", "scene,face", "--scene-backbone", "efficientnet-lite0"]


@pytest.mark.timeout(1500)
def test_paper_preset_learns_the_scene_and_face_cues(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tables = {}
    for split, n, seed in (("train", 24, 0), ("val", 12, 1)):
        videos = tmp_path / f"{split}_videos"
        write_sample_corpus(str(videos), n, seed=seed)
        tables[split] = str(tmp_path / f"features_{split}")
        stdout = run_job(
            "extract", "--videos", str(videos), "--labels", str(videos / "labels.txt"),
            "--output", tables[split], "--preset", "paper", *STAND_INS,
        ).stdout  # fmt: skip
        assert f"{n} clips listed, 0 already done, {n} extracted, 0 errors" in stdout
    run = tmp_path / "run"
    stdout = run_job(
        "train", "--features", tables["train"], "--val-features", tables["val"],
        "--preset", "paper", "--no-ablation", "--stacking-folds", "2", "--run-dir", str(run),
        *STAND_INS, timeout=1200,
    ).stdout  # fmt: skip
    # the paper's schedule: scene 5 epochs of 6, face 20 of 32, FC fusion 30
    assert "head-scene epoch 5/5:" in stdout and "head-face epoch 20/20:" in stdout
    assert "fusion-fc epoch 30/30:" in stdout and "head-scene-fold1 epoch 5/5:" in stdout

    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("emotiw").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    scene_run = by_name["head:scene"]
    assert scene_run.data.params["scene.backbone"] == "efficientnet-lite0"
    assert scene_run.data.params["scene.pooling"] == "gap"  # the deployed head
    assert {"fusion:fc", "fusion:fc-in-sample"} <= set(by_name)  # out-of-fold and in-sample
    # Held-out accuracy (12 clips, cue strength 0.8: a head reading its cue scores ~0.87,
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
