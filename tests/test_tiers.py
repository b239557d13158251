"""The tiers are a partition: every test has exactly one tier marker (or none: unit), so
`make test-fast` (unit), `make test` (not nightly) and `make test-all` select what they say;
each nightly test names the cheaper sibling in `make test` that runs the same code path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole suite as `pytest --collect-only` sees it: each test's tier markers and
    docstring (written by conftest's collection hook)."""
    report = tmp_path_factory.mktemp("tiers") / "tiers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "EMOTIW_TIER_REPORT": str(report)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(report.read_text())


def test_every_test_has_exactly_one_tier(collected) -> None:
    tiers = collected["tiers"]
    assert len(tiers) > 300
    several = {test: t for test, t in tiers.items() if len(t) != 1}
    assert not several, several
    assert {t[0] for t in tiers.values()} == {"unit", "e2e", "nightly"}


def test_each_nightly_test_names_a_sibling_in_make_test(collected) -> None:
    """A nightly test's docstring says ``Sibling in make test: tests/test_x.py::test_y`` (one
    or more), each a collected test of another tier."""
    tiers, docs = collected["tiers"], collected["docs"]
    nightly = [test for test, t in tiers.items() if t == ["nightly"]]
    assert nightly
    for test in nightly:
        doc = " ".join(docs[test].split())
        siblings = re.findall(r"(tests/test_\w+\.py::\w+)", doc.split("Sibling in make test:")[-1])
        assert "Sibling in make test:" in doc and siblings, f"{test}: names no sibling"
        for sibling in siblings:
            found = [t for n, t in tiers.items() if n == sibling or n.startswith(sibling + "[")]
            assert found, f"{test}: sibling {sibling} is not a test"
            assert ["nightly"] not in found, f"{test}: sibling {sibling} is nightly too"


def test_the_makefile_selects_the_tiers() -> None:
    """`make test` and `make test-fast` select by tier marker; `.ci/run` runs `make test`."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'^test:.*\n(\t.*\n)*\t.*-m "not nightly"', makefile, re.M)
    assert re.search(r"^test-fast:.*\n(\t.*\n)*\t.*-m unit", makefile, re.M)
    assert re.search(r"^test-all:", makefile, re.M)
    ci = Path(ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "make test"
