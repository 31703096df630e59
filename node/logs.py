"""Logging for the node process: text for people, ``--log-format json`` for log pipelines.

JSON: one object per line with ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg``, ``node``,
``region``, and — once the node runs — its current Raft ``term`` and ``block`` height (read at the
moment the line is written), plus ``exc`` when an exception is attached.

gRPC's C core writes its own lines to stderr (e.g. ``GOAWAY received … ping_timeout`` when a peer
went away). ``quiet_grpc_core()`` sets ``GRPC_VERBOSITY=ERROR`` unless the operator chose a value,
so those chatty INFO lines disappear; set ``GRPC_VERBOSITY=INFO`` / ``GRPC_TRACE=…`` to see them
again when debugging the transport (docs/operations.md, "Logs").
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Final

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: Callable[[], dict[str, Any]] = dict


def quiet_grpc_core() -> None:
    """Default gRPC core verbosity for the node (must run before gRPC initialises)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def set_context(provider: Callable[[], dict[str, Any]]) -> None:
    """Fields added to every JSON line (the node registers term and block once it runs)."""
    global _context
    _context = provider


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str, region: str) -> None:
        super().__init__()
        self._static = {"node": node, "region": region}

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
                               **self._static}
        with contextlib.suppress(Exception):  # a log line must never fail because the node is half built
            out.update(_context())
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup(level: str, fmt: str, node: str, region: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(node, region) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
