"""Re-exports resolved on first use (PEP 562), so a package's public names can be listed in its
`__init__` without importing its modules: `import emotiw` stays fast (no torch, PyAV, Ray or
MLflow) and a facade never creates an import cycle."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy(package: str, names: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """`(__all__, __getattr__)` for `package`, whose public `names` map to the module (relative
    to the package, or absolute when it starts with ``emotiw.``) that defines each."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = names[name]
        if not module.startswith("emotiw."):
            module = f"{package}.{module}"
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    return sorted(names), __getattr__
