"""The documentation cannot drift from the code: the generated reference is current, the site
builds with `mkdocs build --strict` (every link and anchor resolves), every repository path,
`module.symbol` and `--flag` the pages name exists, every command of the README, the
tutorials and the how-to guides parses with the real parser and names files that exist, and
the user docs carry no development history. The local tutorial's commands run for real in the
nightly tier (tests/test_cli.py::test_demo_trains_registers_scores_and_reruns)."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emotiw.cli import reference
from emotiw.cli.commands import build_parser
from helpers import ROOT, doc_commands

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# The specification sheet cites the authors' repository (its paths and cells), not this one.
OURS = [p for p in PAGES if p.name != "authors-models.md"]
TOP = {"emotiw", "jobs", "tests", "docs", "cluster", "infra", "benchmarks", ".ci"}
FILE_EXTENSIONS = {"txt", "json", "md", "csv", "py", "yaml", "yml", "parquet", "png", "h5",
                   "pth", "dat", "hdf5", "gz", "tf", "html", "mp4", "db", "toml"}  # fmt: skip


def backticked(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)


def test_reference_pages_are_current() -> None:
    """`make docs` would write exactly what is committed (flags, fields, columns, DDL, exit
    codes, weights all come from the code)."""
    assert reference.main([str(DOCS / "reference"), "--check"]) == 0, "run `make docs`"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Every page is in the nav, every link and anchor resolves, the API pages render."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "reference" / "python-api" / "index.html").read_text()
    assert 'id="emotiw.jobs.score.run_score"' in api


def _modules() -> dict[str, object]:
    """Every emotiw module by dotted name (`nets/` is a namespace package: walk the files)."""
    found = {}
    for path in sorted((ROOT / "emotiw").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.endswith("__main__"):
            found[name] = importlib.import_module(name)
    return found


def resolves(token: str, modules: dict[str, object]) -> bool:
    """`token` (``emotiw.a.b``, ``a.b.C.attr``, ``nets/x.Y``, ``Class.attr``) names a real
    object: a module path (full, or its tail) followed by attributes, or a top-level class or
    function of some module followed by attributes."""
    parts = token.replace("/", ".").removesuffix("()").split(".")
    for i in range(len(parts), 0, -1):
        tail = ".".join(parts[:i])
        for name, module in modules.items():
            if (name == tail or name.endswith("." + tail)) and _chain(module, parts[i:]):
                return True
    return any(
        _chain(getattr(m, parts[0]), parts[1:]) for m in modules.values() if hasattr(m, parts[0])
    )


def _chain(obj: object, attrs: list[str]) -> bool:
    for attr in attrs:
        fields = getattr(obj, "__dataclass_fields__", {})
        if attr in fields and not hasattr(obj, attr):
            return True  # a dataclass field without a class-level default
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def test_named_paths_and_symbols_exist() -> None:
    """Every backticked repository path exists, and every backticked dotted name that starts
    with one of emotiw's modules or classes resolves to a real object."""
    modules = _modules()
    leaves = {name.rsplit(".", 1)[-1] for name in modules} | {"emotiw"}
    classes = {n for m in modules.values() for n, v in vars(m).items() if isinstance(v, type)}
    missing = []
    for page in OURS:
        for token in backticked(page.read_text()):
            word = token.split()[0] if token.split() else token
            path = word.rstrip(":,.").split(":")[0]
            if "/" in path and path.split("/")[0] in TOP and "<" not in path and "*" not in path:
                if not (ROOT / path.rstrip("/")).exists():
                    missing.append(f"{page.relative_to(ROOT)}: path {path}")
                continue
            dotted = re.fullmatch(r"[A-Za-z_][\w/]*(\.[A-Za-z_]\w*)+(\(\))?", token)
            if not dotted or token.rsplit(".", 1)[-1] in FILE_EXTENSIONS:
                continue
            head = token.replace("/", ".").split(".")[0]
            if (head in leaves or head in classes) and not resolves(token, modules):
                missing.append(f"{page.relative_to(ROOT)}: symbol {token}")
    assert not missing, "\n".join(missing)


def _all_flags() -> set[str]:
    parser = build_parser()
    found = {o for a in parser._actions for o in a.option_strings}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in sub.choices.values():
        found |= {o for a in command._actions for o in a.option_strings}
    return found


# Flags of other tools the docs quote (ray, pip, pytest, docker, kubectl, mkdocs, ...).
OTHER_TOOLS = {"--working-dir", "--no-deps", "--head", "--num-gpus", "--num-cpus", "--address",
               "--temp-dir", "--durations", "--generate", "--strict", "--build-arg",
               "--recursive", "--check", "--front-ends", "--backends", "--repeat", "--real",
               "--presets", "--frame-batches", "--n", "--seed"}  # fmt: skip


def test_documented_flags_exist() -> None:
    """A backticked ``--flag`` (or a pattern like ``--memory-per-*-actor``) names a flag of
    some emotiw command, or of the other tool the page is quoting."""
    flags = _all_flags()
    unknown = []
    for page in OURS:
        for token in backticked(page.read_text()):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9*<>-]*", token):
                pattern = re.escape(flag).replace(r"\*", "[a-z0-9-]+").replace("<", "").replace(
                    ">", "")  # fmt: skip
                if "<" in flag:  # --<modality>-<field>
                    continue
                if flag in OTHER_TOOLS or any(re.fullmatch(pattern, f) for f in flags):
                    continue
                unknown.append(f"{page.relative_to(ROOT)}: {flag}")
    assert not unknown, "\n".join(sorted(set(unknown)))


def check_command(argv: list[str]) -> None:
    """The command names files that exist, and emotiw parses its emotiw arguments."""
    makefile = (ROOT / "Makefile").read_text()
    while "=" in argv[0] and argv[0].split("=")[0].isupper():  # VAR=value before a command
        argv = argv[1:]
    tool = argv[0].removeprefix(".venv/bin/")
    if tool == "make":
        assert re.search(rf"^{re.escape(argv[1])}:", makefile, re.M), argv
    elif tool == "emotiw":
        build_parser().parse_args(argv[1:])  # SystemExit fails the test
    elif tool == "python" and argv[1] == "-c":
        compile(argv[2], "<doc>", "exec")
    elif tool == "python" and argv[1].startswith("jobs/"):
        assert (ROOT / argv[1]).exists(), argv
        if argv[1] != "jobs/benchmark.py":
            build_parser().parse_args([Path(argv[1]).stem, *argv[2:]])
    elif tool == "ray" and argv[1:3] == ["job", "submit"]:
        check_command(argv[argv.index("--") + 1 :])
    else:  # other tools: the repository files they name exist
        for arg in argv[1:]:
            path = arg.split("=")[-1].removeprefix("-chdir=")
            if path.split("/")[0] in TOP and "..." not in path:
                assert (ROOT / path).exists(), f"{' '.join(argv)}: {path}"


@pytest.mark.parametrize(
    "page", [p for p in OURS if p.parent.name in ("tutorials", "how-to") or p.name == "README.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)  # fmt: skip
def test_the_commands_of_readme_tutorials_and_guides_parse(page: Path) -> None:
    for argv in doc_commands(page):
        try:
            check_command(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: emotiw rejects {' '.join(argv)}")


def test_user_docs_carry_no_development_history() -> None:
    """No issue numbers, session talk or "before/after this change" in README and docs; dated
    figures live on the benchmarks page only."""
    history = re.compile(r"\bissue\b|#\d{2,}\b|\bused to\b|\bno longer\b|"
                         r"\brun [ABC]\b|\bthis (session|change)\b", re.I)  # fmt: skip
    dated = re.compile(r"\b20\d\d-\d\d-\d\d\b")
    found = []
    for page in OURS:
        text = page.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            hit = history.search(line)
            run_names = (
                page.name == "benchmarks.md" and hit and hit.group().lower().startswith("run")
            )
            if hit and "ray-project/ray#" not in line and not run_names:
                found.append(f"{page.relative_to(ROOT)}:{n}: {line.strip()[:90]}")
            if page.name != "benchmarks.md" and dated.search(line) and "range" not in line:
                found.append(f"{page.relative_to(ROOT)}:{n} dated: {line.strip()[:90]}")
    assert not found, "\n".join(found)


def test_the_add_modality_example_is_the_tested_toy() -> None:
    """The guide's example is the code tests/test_toy_modality.py runs end to end."""
    page = (DOCS / "how-to" / "add-modality.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", page, re.S)
    body = example[example.index("@dataclass") :].strip()
    assert body in (ROOT / "tests" / "test_toy_modality.py").read_text()


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
