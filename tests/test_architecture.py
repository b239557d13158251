"""The package's shape: imports point down the layers only (function-level imports included,
which is where cycles hide), no module outside `emotiw.modalities` names a modality, modules
stay small, and the compute layers work without Ray or MLflow installed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

PACKAGE = ROOT / "emotiw"
# The layers are the subpackages, in the order `emotiw.LAYERS` declares (read from the source:
# nothing here is a hand-kept copy). Lower layers never import higher ones; imports within a
# layer are allowed as long as they form no cycle. The package root (the public facade) and
# `__main__` sit above every layer.
LAYERS: tuple[str, ...] = next(
    ast.literal_eval(node.value)
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body
    if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "LAYERS"
)
TOP = len(LAYERS)
MAX_LINES = 420  # "~400": one screenful of structure per module


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    """`name`'s layer: the index of its subpackage in `LAYERS`."""
    if name in ("emotiw", "emotiw.__main__"):
        return TOP
    return LAYERS.index(name.split(".")[1])  # ValueError: a module outside every layer


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                lines.add(getattr(child, "lineno", -1))
    return lines


def imports(name: str) -> set[str]:
    """The emotiw modules `name` imports anywhere in its body (not under TYPE_CHECKING)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    """Every module lives in a layer's subpackage, and every layer is a package on disk."""
    assert all((PACKAGE / name / "__init__.py").exists() for name in LAYERS), LAYERS
    stray = [
        name
        for name in MODULES
        if name not in ("emotiw", "emotiw.__main__") and name.split(".")[1] not in LAYERS
    ]
    assert not stray, f"modules outside every layer (emotiw.LAYERS): {stray}"


def test_each_package_declares_its_public_names() -> None:
    """The facade and every layer list their public names in `__all__`, and each resolves."""
    import importlib

    for name in ("emotiw", *(f"emotiw.{layer}" for layer in LAYERS)):
        package = importlib.import_module(name)
        assert package.__all__, name
        missing = [n for n in package.__all__ if not hasattr(package, n)]
        assert not missing, f"{name}.__all__ names what it cannot give: {missing}"


def _defined_names(tree: ast.Module) -> list[str]:
    """The names a module binds at its top level (functions, classes, assignments)."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def unmarked_private_names(
    sources: dict[str, str], exported: set[str], users: dict[str, str]
) -> list[str]:
    """`module.name` for each public-looking name (no leading underscore) that nothing outside
    its module uses: not exported in an `__all__`, and not named by another module of
    `sources` or by `users` (the scripts and benchmarks built on the package)."""
    found = []
    for module, text in sources.items():
        others = [t for m, t in {**sources, **users}.items() if m != module]
        for name in _defined_names(ast.parse(text)):
            if name.startswith("_") or name in exported:
                continue
            word = re.compile(rf"\b{re.escape(name)}\b")
            if not any(word.search(t) for t in others):
                found.append(f"{module}.{name}")
    return found


def test_internal_names_are_private_by_name() -> None:
    """What users and plug-ins may rely on is in an `__all__`; a name no other module uses is
    the module's own business and says so with a leading underscore. (Names other modules
    import are the package's internal interfaces: documented by their docstrings, not
    promised to users, whose API page lists the `__all__`s only.)"""
    import importlib

    exported = {
        n
        for name in ("emotiw", *(f"emotiw.{layer}" for layer in LAYERS))
        for n in importlib.import_module(name).__all__
    }
    sources = {
        name: path.read_text()
        for name, path in MODULES.items()
        if path.name not in ("__init__.py", "__main__.py")
    }
    users = {
        str(p): p.read_text()
        for folder in ("jobs", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
    }
    found = unmarked_private_names(sources, exported, users)
    assert not found, f"used only in their own module: make them _private: {found}"
    # The check can fail: a helper only its own module calls is caught.
    mine = {"m.a": "def helper(): ...\ndef api(): return helper()\n", "m.b": "from m.a import api"}
    assert unmarked_private_names(mine, set(), {}) == ["m.a.helper"]


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_check_can_fail() -> None:
    """The checker itself: a two-module cycle is reported."""
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "emotiw.core.config": {*saved["emotiw.core.config"], "emotiw.core.errors"}}
    GRAPH["emotiw.core.errors"] = {*saved["emotiw.core.errors"], "emotiw.core.config"}
    try:
        with pytest.raises(AssertionError, match=r"emotiw\.core\.config -> emotiw\.core\.errors"):
            test_no_import_cycles()
    finally:
        GRAPH = saved


def test_no_module_outside_modalities_names_a_modality() -> None:
    """No modality name as a string and no import of a modality module (`clip.audio`, the
    decoded samples, is media, not the modality)."""
    names = ("scene", "pose", "audio", "face")
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("emotiw.modalities"):
            continue
        offenders += [f"{name} imports {m}" for m in GRAPH[name] if m.split(".")[-1] in names]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in names:
                    offenders.append(f"{name}:{node.lineno} {node.value!r}")
            elif isinstance(node, ast.ImportFrom) and node.module == "emotiw.modalities":
                offenders += [
                    f"{name}:{node.lineno} {a.name}" for a in node.names if a.name in names
                ]
    assert not offenders, "\n".join(offenders)


def test_modules_stay_small() -> None:
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert all(v <= MAX_LINES for v in big.values()), {n: v for n, v in big.items() if v > 400}


def test_compute_layers_import_and_run_without_ray_or_mlflow() -> None:
    """What an actor or a notebook uses needs neither Ray nor MLflow (each is imported only
    where it is used)."""
    code = """
import sys
sys.modules["ray"] = None  # makes `import ray` fail
sys.modules["mlflow"] = None
import numpy as np, torch
from emotiw.models import features, fusion, inference, packaging, metrics
from emotiw import modalities
from emotiw.tables import schema
import emotiw.jobs.extract, emotiw.jobs.score, emotiw.jobs.evaluate, emotiw.jobs.train
import emotiw.tracking.client
configs = features.ModalityConfigs.preset("cpu-smoke", ("pose", "face"))
heads = {s.name: s.head(configs.of(s.name)) for s in configs.specs()}
model = fusion.build(heads, fusion.Config(modalities=configs.modalities))
inputs = {s.name: tuple(torch.as_tensor(a) for a in s.example_inputs(configs.of(s.name), 2))
          for s in configs.specs()}
probs, _ = model.predict(inputs, {})
assert probs.shape == (2, 3)
assert "ray" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
