"""Layer 5, tracking: every MLflow call.

- `client`: runs, metrics, tables, model registration and aliases, `models:/` resolution;
- `pyfunc_model`: the packaged model as an MLflow pyfunc model (logged from code).
"""

from emotiw.core.exports import lazy

__all__, __getattr__ = lazy(__name__, {"model_ref": "client", "promote": "client"})
