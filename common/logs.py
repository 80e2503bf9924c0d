"""Structured logging: one line of key=value pairs per event, naming node and worker."""
from __future__ import annotations

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


def setup(level: str, **static: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KVFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def kv(**fields) -> dict:
    """``log.info("connected", extra=kv(client=..))``"""
    return {"kv": fields}
