"""The registered MLflow model as a user of the registry gets it: a models-from-code pyfunc
with a signature and pinned requirements, loaded and run in a fresh virtualenv that has only
those requirements installed (no emotiw on any index: the code ships with the model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from emotiw.io.corpus import write_sample_corpus
from emotiw.models.features import ClipFeatureExtractor, feature_schema, rows_to_table
from helpers import make_package, smoke_configs

PREDICT = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import emotiw  # not installed here: loading the model put its code on the path
out = model.predict(pd.read_parquet(sys.argv[2]))
print(json.dumps({"emotiw": emotiw.__file__, "rows": out.to_dict(orient="records")}))
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A package logged and registered in a file store, downloaded back as a user of the
    registry gets it, with a feature table of real extracted rows to predict on."""
    import mlflow

    from emotiw.tracking.client import _CANDIDATE, log_package, mlflow_client

    tmp_path = tmp_path_factory.mktemp("logged")
    # a feature table of real extracted rows (in-process: no Ray needed for three clips)
    clips = tmp_path / "clips"
    write_sample_corpus(str(clips), 3, seed=5)
    configs = smoke_configs()
    extractor = ClipFeatureExtractor(configs)
    rows = [
        extractor(str(p), p.stem, p.read_bytes(), None, "r") for p in sorted(clips.glob("*.mp4"))
    ]
    features = tmp_path / "features.parquet"
    pq.write_table(rows_to_table(rows).select(feature_schema().names), features)

    before = os.environ.get("MLFLOW_TRACKING_URI")
    client = mlflow_client(None, "package-test", str(tmp_path / "mlruns"))
    try:
        package = make_package(tmp_path / "model" / "emotiw-test", configs)
        with client.start_run():
            uri = log_package(client, package, "emotiw-test")
        version = mlflow.MlflowClient().get_model_version_by_alias("emotiw-test", _CANDIDATE)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl"))
        )
    finally:
        mlflow.set_tracking_uri(before)  # a module fixture: conftest restores per test only
    return {"uri": uri, "version": version, "local": local, "features": features}


def test_registered_model_is_code_with_a_signature_and_pinned_requirements(logged) -> None:
    import mlflow

    from emotiw.tracking.client import _MODEL_REQUIREMENTS

    local = logged["local"]
    assert logged["uri"] == f"models:/emotiw-test/{logged['version'].version}"
    # models from code: the model is this file, not a pickle; the emotiw code ships with it
    meta = mlflow.models.Model.load(str(local / "MLmodel"))
    pyfunc = meta.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert pyfunc["model_code_path"].endswith("pyfunc_model.py")
    assert not list(local.rglob("python_model.pkl"))
    assert (local / "code" / "emotiw" / "models" / "packaging.py").is_file()
    inputs = {c.name: c for c in meta.signature.inputs.inputs}
    assert inputs["video_id"].required and not inputs["face"].required
    assert [c.name for c in meta.signature.outputs.inputs][-1] == "predicted"
    requirements = (local / "requirements.txt").read_text().split()
    assert [r.split("==")[0] for r in requirements] == list(_MODEL_REQUIREMENTS)
    assert all("==" in r and "+" not in r for r in requirements)
    out = mlflow.pyfunc.load_model(str(local)).predict(
        pq.read_table(logged["features"]).to_pandas()
    )
    assert len(out) == 3 and set(out["predicted"]) <= {"positive", "neutral", "negative"}


@pytest.mark.nightly
def test_registered_model_loads_and_predicts_in_a_fresh_virtualenv(logged, tmp_path: Path) -> None:
    """The downloaded model run in a fresh virtualenv that has only its requirements (an
    install of minutes: nightly), with the same predictions as here.
    Sibling in make test:
    tests/test_model_package.py::test_registered_model_is_code_with_a_signature_and_pinned_requirements
    (the same logged model, its requirements and pyfunc, loaded in this environment)."""
    import mlflow

    local, features = logged["local"], logged["features"]
    expected = mlflow.pyfunc.load_model(str(local)).predict(pq.read_table(features).to_pandas())
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", str(local / "requirements.txt")],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run(
        [python, "-c", PREDICT, str(local), str(features)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])
    assert got["emotiw"].startswith(str(local / "code"))  # not installed: shipped with the model
    assert [r["video_id"] for r in got["rows"]] == list(expected["video_id"])
    assert [r["predicted"] for r in got["rows"]] == list(expected["predicted"])
    probs = [[r[f"prob_{c}"] for c in ("positive", "neutral", "negative")] for r in got["rows"]]
    assert np.allclose(
        probs, expected[["prob_positive", "prob_neutral", "prob_negative"]], atol=1e-5
    )


def test_the_model_file_names_the_package_artifact_as_packaging_does() -> None:
    """pyfunc_model.py repeats `packaging.ARTIFACT` (MLflow runs it as the model file)."""
    from emotiw.models import packaging
    from emotiw.tracking import pyfunc_model

    assert pyfunc_model.ARTIFACT == packaging.ARTIFACT
