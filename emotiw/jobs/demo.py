"""`make demo`: the main job end to end on the embedded default (local Ray, local files).

1. a labelled synthetic sample corpus (training) and a new "drop" of unseen clips that also
   holds bad files (corrupt, empty);
2. quick models, only if none is registered yet: extract -> train (Ray Train, MLflow in a
   SQLite store under the work dir) -> registered ``models:/emotiw-demo/N``;
3. the scoring job over the drop: CPU extract pool -> model pool -> Parquet partitioned by
   ``scored_date``; then a rerun, which finds nothing new;
4. a summary read back from the Parquet with DuckDB.

The demo model uses the ``cpu-smoke`` preset: scene (EfficientNet-Lite0, whose ImageNet
weights ship offline), audio (log-mel) and face: OpenL3 and Keypoint R-CNN weights cannot be
downloaded here, and pose on CPU costs ~10 s per clip (docs/benchmarks.md, pose). The data is
synthetic; the scores show the pipeline working, not accuracy on real video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_MODEL_NAME = "emotiw-demo"
_PRESET = "cpu-smoke"  # `emotiw.models.presets`: trains on the synthetic corpus in minutes


@dataclass(frozen=True)
class DemoConfig:
    """The demo.

    Attributes:
        workdir: folder for the corpus, the drop, MLflow's store and the scores table.
        n_train: synthetic training clips to write.
        n_drop: new clips to score (2 bad files are added).
        seed: seed of the synthetic corpora.
        epochs: epochs of each head.
        fusion_epochs: epochs of each fusion variant.
    """

    workdir: str = "runs/demo"
    n_train: int = 18
    n_drop: int = 8
    seed: int = 0
    epochs: int = 8
    fusion_epochs: int = 20


def run_demo(cfg: DemoConfig) -> int:
    from emotiw.io.corpus import write_sample_corpus
    from emotiw.jobs.extract import ExtractConfig, run_extract
    from emotiw.jobs.score import ScoreConfig, run_score
    from emotiw.jobs.train import TrainConfig, run_train
    from emotiw.tracking.client import latest_version

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user Ray
    work = Path(cfg.workdir).resolve()
    train_dir, drop_dir = work / "corpus", work / "drop"
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work}/mlflow.db"
    work.mkdir(parents=True, exist_ok=True)
    model = latest_version(tracking, _MODEL_NAME)  # a registered model: no training corpus
    if model is None and not (train_dir / "labels.txt").exists():
        print(f"[1/4] writing {cfg.n_train} synthetic training clips to {train_dir}", flush=True)
        write_sample_corpus(str(train_dir), cfg.n_train, cfg.seed)
    if not (drop_dir / "labels.txt").exists():
        print(f"[1/4] writing a drop of {cfg.n_drop} new clips + 2 bad files to {drop_dir}")
        write_sample_corpus(str(drop_dir), cfg.n_drop, cfg.seed + 1)
        (drop_dir / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
        (drop_dir / "empty.mp4").write_bytes(b"")

    if model:
        print(f"[2/4] using the registered {model} ({tracking})", flush=True)
    else:
        print("[2/4] no registered model yet: extracting features, then training", flush=True)
        summary = run_extract(
            ExtractConfig(
                videos=str(train_dir),
                labels=str(train_dir / "labels.txt"),
                output=str(work / "features"),
                preset=_PRESET,
            )
        )
        print(f"      extract: {summary}", flush=True)
        result = run_train(
            TrainConfig(
                features=str(work / "features"),
                preset=_PRESET,  # its uniform schedule: the few epochs below, not the paper's
                epochs=cfg.epochs,
                fusion_epochs=cfg.fusion_epochs,
                batch_size=8,
                tracking_uri=tracking,
                model_name=_MODEL_NAME,
                run_dir=str(work / "train"),
            )
        )
        model = result.model_uri
        scores = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in result.scores.items())
        print(f"      registered {model}; validation accuracy: {scores}", flush=True)

    out = str(work / "scores")
    score_cfg = ScoreConfig(input=str(drop_dir), output=out, model=model, tracking_uri=tracking)
    print(f"[3/4] scoring {drop_dir} with {model} (Ray Data: CPU pool -> model pool)", flush=True)
    print(run_score(score_cfg), flush=True)
    print("      a scheduled rerun over the same drop (--skip-existing):", flush=True)
    print(run_score(score_cfg), flush=True)

    import duckdb

    print(f"[4/4] the scores table, read back with DuckDB ({out}):", flush=True)
    query = (
        "SELECT scored_date, coalesce(predicted, 'error: ' || error_reason) AS outcome, "
        "count(*) AS clips, round(avg(prob_positive), 3) AS mean_prob_positive "
        f"FROM (FROM read_parquet('{out}/*/*.parquet', hive_partitioning = true, "
        "union_by_name = true) "
        "QUALIFY row_number() OVER (PARTITION BY uri ORDER BY scored_at DESC) = 1) "
        "GROUP BY ALL ORDER BY ALL"
    )
    print(duckdb.sql(query), flush=True)
    return 0
