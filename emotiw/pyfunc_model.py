"""The packaged model as an MLflow pyfunc model (logged and registered by `emotiw.tracking`).

Its own module, imported only when MLflow logs or loads a model (it imports mlflow and pandas
at the top), and without ``from __future__ import annotations``: MLflow reads the type hints
of `predict` when the class is defined, and a DataFrame in and out is the hint it accepts
without inferring a schema (no "Add type hints to the predict method" warning).
"""

import mlflow.pyfunc
import pandas as pd

from emotiw.packaging import ARTIFACT


class EmotiwPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes feature-table rows (a DataFrame) and returns the fused class
    probabilities, the predicted class and the video id per successfully extracted row."""

    def load_context(self, context) -> None:
        from emotiw.packaging import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import pyarrow as pa

        from emotiw.config import CLASS_NAMES
        from emotiw.features import feature_schema, to_feature_set
        from emotiw.inference import predict

        rows = pa.Table.from_pandas(model_input, schema=feature_schema(), preserve_index=False)
        data = to_feature_set(rows, self.model.configs, require_labels=False)
        probs, preds = predict(self.model.fusion, data, None)
        out = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASS_NAMES])
        out.insert(0, "video_id", data.video_ids)
        out["predicted"] = [CLASS_NAMES[i] for i in preds]
        return out
