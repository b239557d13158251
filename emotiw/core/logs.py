"""The jobs' diagnostics on stderr: progress lines, alarms, one-line errors, training epochs,
as Python `logging` records under the ``emotiw`` logger, so that levels filter them and a log
shipper can take them as JSON lines (``--log-format json``). Results (summaries, tables) stay
on stdout. Set up once by the command line (`setup`); the library only calls `get`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_ROOT = "emotiw"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
# The command line exports its choice, so a job's subprocesses (Ray's local driver helpers,
# the schedule's dry run) log alike.
LEVEL_ENV, FORMAT_ENV = "EMOTIW_LOG_LEVEL", "EMOTIW_LOG_FORMAT"


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the
    structured fields a record carries in ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str | None = None, fmt: str | None = None, stream: Any = None) -> None:
    """Route the ``emotiw`` loggers to `stream` (stderr) at `level` in `fmt` (text: the bare
    message, as a person reads it; json: `_JsonFormatter`); None takes the environment's
    choice, else info / text."""
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").lower()
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    os.environ[LEVEL_ENV], os.environ[FORMAT_ENV] = level, fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(message)s"))
    logger = logging.getLogger(_ROOT)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def get(name: str) -> logging.Logger:
    """The logger of one part (``emotiw.<name>``)."""
    return logging.getLogger(f"{_ROOT}.{name}")
