"""Every MLflow call: the tracking client, parameters and metrics, the packaged model as a
pyfunc model (logged, registered, resolved from ``models:/`` URIs). Imports mlflow inside the
functions, so only code that tracks or loads registered models pays for it (~1.5-3 s)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emotiw.models import metrics
from emotiw.models.inference import ModelRef

_PROBE_TIMEOUT_S = 10.0


def _check_reachable(tracking_uri: str | None) -> None:
    """Fail fast when an HTTP tracking server does not answer: MLflow's own client retries a
    refused connection for minutes before it gives up.

    Raises:
        Unavailable: the server's ``/health`` did not answer within `_PROBE_TIMEOUT_S`.
    """
    import urllib.error
    import urllib.request

    from emotiw.core.errors import Unavailable

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy, an older server without /health)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unavailable(f"MLflow tracking server {uri} did not answer: {reason}") from None


@contextlib.contextmanager
def _registry_errors(uri: str, tracking_uri: str | None) -> Iterator[None]:
    """MLflow's exceptions about `uri` as the project's: a missing model, version or alias ->
    `ModelNotFound`; anything else from the registry -> `Unavailable`."""
    from mlflow.exceptions import MlflowException

    from emotiw.core.errors import ModelNotFound, Unavailable

    try:
        yield
    except MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelNotFound(f"{uri}: {first}") from None
        where = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default store"
        raise Unavailable(f"{uri}: MLflow at {where}: {first}") from None


def mlflow_client(tracking_uri: str | None, experiment: str, run_dir: str) -> Any:
    """`mlflow`, pointed at `tracking_uri` ($MLFLOW_TRACKING_URI, else a SQLite store under
    `run_dir`) with `experiment` active (created with a local artifact root if needed)."""
    import mlflow

    _check_reachable(tracking_uri)
    folder = Path(run_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None if uri.startswith("http") else (folder / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return mlflow


def flat_params(prefix: str, cfg: Any) -> dict[str, str]:
    """A config dataclass (or dict) as flat MLflow params."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k not in ("vote_weights",):
            out.update(flat_params(key, v))
        elif k not in ("key", "secret", "token"):
            out[key] = json.dumps(v) if isinstance(v, dict | list | tuple) else str(v)
    return out


def log_scores(
    mlflow: Any,
    title: str,
    labels: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray | None = None,
    step: int = 0,
) -> dict[str, float]:
    """Final metrics and the confusion-matrix PNG into the active run.

    `step`: one past the last epoch of the run's history. MLflow's value of a metric is the
    one at its highest step, so at step 0 ``val_accuracy`` read back as the last epoch's, not
    the selected checkpoint's.
    """
    import matplotlib.pyplot as plt

    result = metrics.scores(labels, probs, predicted)
    mlflow.log_metrics({f"val_{k}": v for k, v in result.items()}, step=step)
    pred = probs.argmax(1) if predicted is None else predicted
    figure = metrics.confusion_figure(metrics.confusion(labels, pred), title)
    mlflow.log_figure(figure, "confusion_matrix.png")
    plt.close(figure)
    return result


def log_history(mlflow: Any, history: list[dict[str, float]]) -> None:
    """Per-epoch metrics of one training run."""
    for row in history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def log_tables(mlflow: Any, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Evaluation tables as metrics named ``<table>.<model>.<metric>``."""
    for key, rows in tables.items():
        for row in rows:
            name = re.sub(r"[^0-9A-Za-z_\-. /]", "_", f"{key}.{row['model']}")
            mlflow.log_metrics(
                {f"{name}.{m}": row[m] for m in ("accuracy", "precision", "recall", "f1")}
            )


# The candidate alias training gives each version it registers; the schedule scores
# `champion`, which only `emotiw promote` sets.
_CANDIDATE = "candidate"
# What the logged model needs on a clean machine beside the emotiw code it ships with: pinned
# to the versions that trained it (the public version: torch 2.13.0+cpu -> torch==2.13.0, so a
# CUDA build satisfies it too). tests/test_model_package.py installs exactly these into a fresh
# virtualenv, loads the model and predicts.
_MODEL_REQUIREMENTS = (
    "mlflow-skinny", "torch", "torchvision", "efficientnet-lite-pytorch", "numpy", "pandas",
    "pyarrow", "safetensors", "pillow",
)  # fmt: skip


def _model_requirements() -> list[str]:
    """`_MODEL_REQUIREMENTS` pinned to the installed versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in _MODEL_REQUIREMENTS]


def _mlflow_type(arrow_type: Any) -> Any:
    import pyarrow as pa
    from mlflow.types.schema import Array, DataType

    if pa.types.is_list(arrow_type):
        return Array(_mlflow_type(arrow_type.value_type))
    checks = ((pa.types.is_string, "string"), (pa.types.is_boolean, "boolean"),
              # small integers as doubles: pandas holds an integer column with nulls as
              # floats, which MLflow refuses to narrow, and an int32 widens to a double exactly
              (pa.types.is_integer, "double"),
              (pa.types.is_float32, "float"), (pa.types.is_floating, "double"),
              (pa.types.is_binary, "binary"))  # fmt: skip
    for test, name in checks:
        if test(arrow_type):
            return DataType[name]
    raise TypeError(f"no MLflow type for {arrow_type}")


def _model_signature() -> Any:
    """The pyfunc model's signature: in, the feature-table columns a model reads (only
    ``video_id`` required: the model says which of its modalities' columns is missing; the
    table's other columns are ignored), out ``video_id``, ``prob_<class>`` and ``predicted``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from emotiw import modalities as registry
    from emotiw.core.config import CLASS_NAMES
    from emotiw.models.features import feature_schema
    from emotiw.tables.schema import FRAMES_COLUMN

    read = {"video_id", "uri", "error", "n_frames", FRAMES_COLUMN}  # (labels: not needed)
    read |= {c.name for spec in registry.specs() for c in spec.columns()}
    inputs = [ColSpec(_mlflow_type(f.type), f.name, required=f.name == "video_id")
              for f in feature_schema() if f.name in read]  # fmt: skip
    outputs = [ColSpec("string", "video_id"), *(ColSpec("float", f"prob_{c}") for c in CLASS_NAMES),
               ColSpec("string", "predicted")]  # fmt: skip
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def log_package(mlflow: Any, package_dir: Path, registered_name: str) -> str:
    """Log `package_dir` as a models-from-code pyfunc model (`emotiw.tracking.pyfunc_model`, with
    the emotiw code, a signature and pinned requirements) in the active run, register it and point
    the ``candidate`` alias at the new version (never ``champion``: a trained model reaches the
    schedule only when promoted); returns the ``models:/name/version`` URI."""
    import importlib.util

    from emotiw.models.packaging import ARTIFACT

    # the file's path, not an import: importing runs its `set_model` in this process
    model_file = importlib.util.find_spec("emotiw.tracking.pyfunc_model").origin  # type: ignore[union-attr]

    with warnings.catch_warnings():
        # The signature is given; an input example would store a clip's JPEG frames (~0.4 MB)
        # in every version, so MLflow's "input example was not provided" hint is not for us.
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model_file,
            artifacts={ARTIFACT: str(package_dir)},
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the emotiw package
            signature=_model_signature(),
            pip_requirements=_model_requirements(),
        )
    # Registered through the client, not `registered_model_name=`: MLflow's fluent registration
    # prints "Successfully registered model" / "Created version" on stderr unconditionally.
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(registered_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = str(client.create_model_version(
        registered_name, info.model_uri, run_id=info.run_id, model_id=info.model_id
    ).version)  # fmt: skip
    client.set_registered_model_alias(registered_name, _CANDIDATE, version)
    return f"models:/{registered_name}/{version}"


_INTENDED_USE = (
    "Group-level sentiment (positive / neutral / negative) of short in-the-wild group video "
    "clips, following the EmotiW 2020 group emotion task (VGAF). Limits: trained on the tables "
    "named in the training_data tag (synthetic clips where they came from `emotiw "
    "sample-corpus`: such a model shows the pipeline, not accuracy on real video); scores a "
    "group, never an individual; not validated for decisions about people."
)


def model_card(
    client: Any,
    name: str,
    version: str,
    training: dict[str, Any],
    scores: dict[str, Any],
    provenance: dict[str, str],
) -> None:
    """The registered version's model card: a description and searchable tags (training
    data, per-head and per-fusion validation metrics, weights provenance, intended use)."""
    best = max(scores.items(), key=lambda kv: kv[1]["accuracy"])
    lines = [
        f"emotiw model: heads {', '.join(k for k in scores if ':' not in k)}; fusion variants "
        f"{', '.join(k.split(':', 1)[1] for k in scores if k.startswith('fusion:'))}.",
        f"Trained on {training['features']} ({training['n_train']} clips), validated on "
        f"{training['val_features'] or 'a held-out split'} ({training['n_val']} clips); best "
        f"validation accuracy {best[1]['accuracy']:.3f} ({best[0]}).",
        "Weights: " + "; ".join(f"{k}: {v}" for k, v in sorted(provenance.items())),
        _INTENDED_USE,
    ]
    client.update_model_version(name, version, description="\n\n".join(lines))
    tags = {
        "training_data": json.dumps({k: training[k] for k in ("features", "val_features")}),
        "n_train": str(training["n_train"]),
        "n_val": str(training["n_val"]),
        "weights_provenance": json.dumps(provenance, sort_keys=True),
        "intended_use": _INTENDED_USE,
        **{f"val_accuracy.{k}": f"{v['accuracy']:.4f}" for k, v in scores.items()},
        **{f"val_f1.{k}": f"{v['f1']:.4f}" for k, v in scores.items() if "f1" in v},
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])


def promote(uri: str, alias: str, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """Point `alias` of the registered model at the version `uri` names (``models:/name/N``,
    ``/latest`` or ``@other-alias``); returns (the version's URI, the version the alias named
    before, or None).

    Raises:
        ModelNotFound: no such model or version.
        ValueError: `uri` is not a registry URI.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model_ref(uri, tracking_uri)
    if ref.version is None:
        raise ValueError(f"promote takes models:/name/version (or @alias), not {uri!r}")
    client = MlflowClient(tracking_uri)
    with _registry_errors(uri, tracking_uri):
        client.get_model_version(ref.name, ref.version)  # exists
        try:
            before: str | None = str(client.get_model_version_by_alias(ref.name, alias).version)
        except MlflowException:
            before = None
        client.set_registered_model_alias(ref.name, alias, ref.version)
    return ref.uri, before


def resolve_model_dir(uri: str, tracking_uri: str | None = None) -> Path:
    """A local package directory for `uri`: a path, or an MLflow ``models:/`` / ``runs:/``
    URI (downloaded)."""
    if not uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://")):
        return Path(uri.removeprefix("file://"))
    import mlflow

    _check_reachable(tracking_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with _registry_errors(uri, tracking_uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def model_ref(uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Resolve ``models:/name/version``, ``models:/name/latest`` or ``models:/name@alias`` to
    a concrete version, so every row of a run names the same one; a local package keeps its
    directory name and no version."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\w+)|@([\w-]+))", uri)
    if not match:
        if uri.startswith("models:/"):
            raise ValueError(f"expected models:/name/version, /latest or @alias, got {uri!r}")
        return ModelRef(uri, Path(uri.rstrip("/")).name, None)
    name, version, alias = match.groups()
    if alias or version == "latest":
        from mlflow import MlflowClient

        from emotiw.core.errors import ModelNotFound

        _check_reachable(tracking_uri)
        client = MlflowClient(tracking_uri)
        with _registry_errors(uri, tracking_uri):
            if alias:
                version = str(client.get_model_version_by_alias(name, alias).version)
            else:
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise ModelNotFound(f"{uri}: no registered versions of model {name!r}")
                version = str(max(int(v.version) for v in versions))
    return ModelRef(f"models:/{name}/{version}", name, version)


def latest_version(tracking_uri: str, name: str) -> str | None:
    """``models:/name/N`` of the newest registered version, or None when there is none."""
    from emotiw.core.errors import ModelNotFound

    try:
        return model_ref(f"models:/{name}/latest", tracking_uri).uri
    except ModelNotFound:  # no such model, or no version of it
        return None
