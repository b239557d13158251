"""The packaged model as an MLflow pyfunc model, logged *from code*: MLflow stores this file itself
as the model (no pickled object), beside the `emotiw` package code (``code_paths``), the package
directory (artifact `ARTIFACT`), an input/output signature and pinned requirements
(`emotiw.tracking.client.log_package`), so ``mlflow.pyfunc.load_model`` works in a clean virtualenv
that has only those requirements installed (no emotiw release on any index).

No ``from __future__ import annotations``: MLflow reads the type hints of `predict` when the
class is defined, and a DataFrame in and out is the hint it accepts without inferring a schema
(no "Add type hints to the predict method" warning).
"""

import mlflow.models
import mlflow.pyfunc
import pandas as pd

ARTIFACT = "package"  # = emotiw.models.packaging.ARTIFACT (this file must import without emotiw)


class _EmotiwPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes feature-table rows (a DataFrame; columns the model does not need may
    be left out) and returns the fused class probabilities, the predicted class and the video
    id per row."""

    def load_context(self, context) -> None:
        from emotiw.models.packaging import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import pyarrow as pa

        from emotiw.core.config import CLASS_NAMES
        from emotiw.models.features import feature_schema, to_feature_set
        from emotiw.models.inference import predict

        schema = feature_schema()
        columns = [  # (pandas: integers with nulls as floats, missing columns as nulls)
            pa.array(model_input[f.name], from_pandas=True).cast(f.type)
            if f.name in model_input
            else pa.nulls(len(model_input), f.type)
            for f in schema
        ]
        rows = pa.Table.from_arrays(columns, schema=schema)
        data = to_feature_set(rows, self.model.configs, require_labels=False)
        probs, preds = predict(self.model.fusion, data, None)
        out = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASS_NAMES])
        out.insert(0, "video_id", data.video_ids)
        out["predicted"] = [CLASS_NAMES[i] for i in preds]
        return out


mlflow.models.set_model(_EmotiwPyfunc())
