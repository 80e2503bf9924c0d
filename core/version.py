"""The version string a node reports ($SYS/broker/version, /api/v1/nodes)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = f"shoal {version('shoal')}"
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "shoal dev"
