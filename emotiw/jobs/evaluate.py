"""The evaluate job: the paper's tables (1: each modality, 2: each fusion method, 3: the main fusion
without each modality) with accuracy and macro precision / recall / F1, confusion matrices,
written as Markdown and CSV and logged to MLflow."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotiw.core.config import StorageConfig
from emotiw.models import metrics

# Measured: accuracy, macro and support-weighted precision / recall / F1 (the authors' code
# mostly reported weighted averages); then the paper's figure for the same row.
_PAPER = "paper (P / R / F1)"
_COLUMNS = ["model", "accuracy", "precision", "recall", "f1", "precision_weighted",
           "recall_weighted", "f1_weighted", _PAPER, "cross_entropy", "n"]  # fmt: skip


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate job.

    Attributes:
        model: ``models:/name/version``, ``runs:/...`` or a package directory.
        features: a labelled feature table (path or s3://).
        output: folder for the Markdown, CSV and confusion-matrix PNGs.
        tracking_uri: MLflow tracking URI to log the evaluation to (None:
            $MLFLOW_TRACKING_URI; no logging without one).
        experiment: MLflow experiment name.
        storage: endpoint and credentials of s3:// tables.
    """

    model: str
    features: str
    output: str = "runs/evaluate"
    tracking_uri: str | None = None
    experiment: str = "emotiw"
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass
class Evaluation:
    tables: dict[str, list[dict[str, Any]]]
    markdown: str
    output: Path


def run_evaluate(cfg: EvaluateConfig) -> Evaluation:
    import os

    import matplotlib.pyplot as plt

    from emotiw.modalities import paper
    from emotiw.models.features import read_rows, to_feature_set
    from emotiw.models.inference import predict
    from emotiw.models.packaging import load_model
    from emotiw.tracking.client import log_tables, mlflow_client, resolve_model_dir

    tracking = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    package = load_model(resolve_model_dir(cfg.model, tracking))
    data = to_feature_set(read_rows(cfg.features, cfg.storage), package.configs)
    if len(data) == 0:
        raise ValueError(f"{cfg.features}: no labelled, successfully extracted clips")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict[str, Any]]] = {"modalities": [], "fusion": [], "ablation": []}
    confusions = {}
    for name, head in package.heads.items():
        probs, preds = predict(head, data, name)
        row = {"model": name, **metrics.scores(data.labels, probs, preds)}
        tables["modalities"].append({**row, _PAPER: paper.cell(paper.TABLE1.get(name))})
        confusions[f"head-{name}"] = metrics.confusion(data.labels, preds)
    main = package.default
    for variant, model in package.fusions.items():
        probs, preds = predict(model, data, None)
        row = {"model": variant, **metrics.scores(data.labels, probs, preds)}
        confusions[f"fusion-{variant}"] = metrics.confusion(data.labels, preds)
        if variant.startswith(f"{main}-without-"):
            left_out = variant.removeprefix(f"{main}-without-")
            figures = paper.TABLE3_WITHOUT.get(left_out) if main == "fc" else None
            note = paper.INVALID.get(("table3", left_out), "")
            tables["ablation"].append({**row, _PAPER: paper.cell(figures, note)})
        else:
            tables["fusion"].append({**row, _PAPER: paper.cell(paper.TABLE2.get(variant))})
            if variant == main:
                tables["ablation"].insert(0, {**row, "model": f"{main} (all)", _PAPER: "-"})
    titles = {
        "modalities": "Table 1: each modality's head",
        "fusion": "Table 2: fusion methods",
        "ablation": f"Table 3: {main} fusion without each modality",
    }
    parts = [f"# Evaluation of {cfg.model} on {cfg.features} ({len(data)} clips)"]
    for key, rows in tables.items():
        parts += [f"## {titles[key]}", metrics.markdown_table(rows, _COLUMNS)]
        with open(out / f"{key}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    markdown = "\n\n".join(parts) + "\n"
    (out / "metrics.md").write_text(markdown)
    for key, cm in confusions.items():
        figure = metrics.confusion_figure(cm, key)
        figure.savefig(out / f"confusion-{key}.png", dpi=100)
        plt.close(figure)
    if tracking:
        mlflow = mlflow_client(tracking, cfg.experiment, str(out))
        with mlflow.start_run(run_name="evaluate"):
            mlflow.log_params({"model": cfg.model, "features": cfg.features, "n": len(data)})
            log_tables(mlflow, tables)
            mlflow.log_artifacts(str(out), "evaluation")
    return Evaluation(tables, markdown, out)
