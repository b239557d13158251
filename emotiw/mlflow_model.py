"""The packaged model as an MLflow pyfunc model: logged, registered, and resolvable from a
``models:/name/version`` URI. Imports mlflow, so only modules that log or load models use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

ARTIFACT = "package"


class EmotiwPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes feature-table rows (a DataFrame) and returns the fused class
    probabilities, the predicted class and the video id per successfully extracted row."""

    def load_context(self, context: Any) -> None:
        from emotiw.packaging import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import pyarrow as pa

        from emotiw.config import CLASS_NAMES
        from emotiw.features import to_feature_set
        from emotiw.schema import feature_schema
        from emotiw.training import predict

        rows = pa.Table.from_pandas(model_input, schema=feature_schema(), preserve_index=False)
        data = to_feature_set(rows, self.model.configs, require_labels=False)
        probs, preds = predict(self.model.fusion, data, None)
        out = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASS_NAMES])
        out.insert(0, "video_id", data.video_ids)
        out["predicted"] = [CLASS_NAMES[i] for i in preds]
        return out


def log_package(mlflow: Any, package_dir: Path, registered_name: str) -> str:
    """Log `package_dir` as a pyfunc model in the active run and register it; returns the
    ``models:/name/version`` URI."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=EmotiwPyfunc(),
        artifacts={ARTIFACT: str(package_dir)},
        registered_model_name=registered_name,
    )
    version = info.registered_model_version
    return f"models:/{registered_name}/{version}"


def resolve_model_dir(uri: str, tracking_uri: str | None = None) -> Path:
    """A local package directory for `uri`: a path, or an MLflow ``models:/`` / ``runs:/``
    URI (downloaded)."""
    if not uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://")):
        return Path(uri.removeprefix("file://"))
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
