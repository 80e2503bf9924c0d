"""Structured logging: one line per event, naming node and worker.

Two formats (SHOAL_LOG_FORMAT): ``kv`` (default) writes key=value pairs,
``json`` one JSON object per line with the same fields (``ts``, ``level``,
``node``, ``worker`` or ``process``, ``event``, then the event's own fields
such as ``client``).
"""
from __future__ import annotations

import json
import logging
import sys


class KVFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str]):
        super().__init__()
        self.static = " ".join(f"{k}={v}" for k, v in static.items())

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        parts = [self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), record.levelname.lower(), self.static, f"event={msg!r}" if " " in msg else f"event={msg}"]
        extra = getattr(record, "kv", None)
        if extra:
            parts.extend(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in extra.items())
        line = " ".join(p for p in parts if p)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str]):
        super().__init__()
        self.static = dict(static)

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower()}
        obj.update(self.static)
        obj["event"] = record.getMessage()
        extra = getattr(record, "kv", None)
        if extra:
            for k, v in extra.items():
                obj.setdefault(k, v)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def setup(level: str, fmt: str = "kv", **static: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(static) if fmt == "json" else KVFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def kv(**fields) -> dict:
    """``log.info("connected", extra=kv(client=..))``"""
    return {"kv": fields}
