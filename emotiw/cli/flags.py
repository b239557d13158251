"""Command-line flags generated from config dataclasses, so no default is written twice.

Each field becomes ``--<prefix><field-name>`` with its type, the dataclass default (shown in
the help, never stored in the parser: absent flags leave the field to the dataclass) and the
field's description from the class docstring's ``Attributes:`` section. Booleans get
``--x/--no-x``; tuples take comma-separated values; ``dict[str, float]`` takes ``a=1,b=2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

# Fields never exposed as flags: secrets (credentials come from the standard AWS chain).
SECRET_FIELDS = frozenset({"key", "secret", "token"})


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> description, from the Google-style ``Attributes:`` docstring section
    (``a, b: text`` documents both fields; continuation lines are joined)."""
    doc = cls.__doc__ or ""
    match = re.search(r"^\s*Attributes:\s*$(.*)", doc, re.M | re.S)
    if not match:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    indent = None
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        head = re.match(r"\s*([\w, ]+):\s*(.*)", line)
        if depth == indent and head:
            current = [n.strip() for n in head.group(1).split(",")]
            for name in current:
                out[name] = head.group(2).strip()
        else:
            for name in current:
                out[name] += " " + line.strip()
    return out


def _hints(cls: type) -> dict[str, Any]:
    import sys

    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, vars(module))


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parser_for(tp: Any, optional: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else str

        def parse_tuple(text: str) -> tuple[Any, ...]:
            return tuple(item(v) for v in text.split(",") if v)

        return parse_tuple
    if origin is dict:

        def parse_dict(text: str) -> dict[str, float]:
            pairs = [p.partition("=") for p in text.split(",") if p]
            if any(not v for _, _, v in pairs):
                raise argparse.ArgumentTypeError(f"expected name=value,...; got {text!r}")
            return {k: float(v) for k, _, v in pairs}

        return parse_dict
    base = tp if tp in (int, float, str) else str
    if optional:

        def parse_optional(text: str) -> Any:
            return None if text.lower() in ("none", "") else base(text)

        return parse_optional
    return base


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def add_fields(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    prefix: str = "",
    skip: Iterable[str] = (),
    dest_prefix: str | None = None,
) -> None:
    """Add a flag for every plain field of `cls` (nested config fields are skipped: the caller
    adds them with their own prefix). Values land in ``<dest_prefix><field>`` only when given."""
    docs = attribute_docs(cls)
    hints = _hints(cls)
    dest_prefix = prefix.replace("-", "_") if dest_prefix is None else dest_prefix
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in SECRET_FIELDS or not f.init:
            continue
        tp, optional = _base_type(hints[f.name])
        if _is_config(tp) or tp is typing.Any:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = field_default(f)
        required = default is dataclasses.MISSING
        help_text = docs.get(f.name, "")
        if not required:
            help_text += f" (default: {show_value(default)})"
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "help": help_text.strip()}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parser_for(tp, optional)
            kwargs["metavar"] = f.name.upper() if typing.get_origin(tp) is None else "A,B,..."
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(flag, **kwargs)


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def show_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def given(args: argparse.Namespace, cls: type, dest_prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` that were given on the command line (under `dest_prefix`)."""
    out = {}
    for f in dataclasses.fields(cls):
        key = dest_prefix + f.name
        if hasattr(args, key):
            out[f.name] = getattr(args, key)
    return out
