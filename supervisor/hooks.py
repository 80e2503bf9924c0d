"""circusd hooks named in circus.ini."""
from __future__ import annotations

import logging

from common.settings import Settings

log = logging.getLogger("circus")


def apply_worker_count(watcher, arbiter, hook_name, **kwargs) -> bool:
    """Run SHOAL_WORKERS worker processes (default: one per core)."""
    try:
        n = max(1, Settings().workers)
    except Exception as e:  # a bad setting: say so, and refuse to start
        log.error("shoal: invalid SHOAL_* setting: %s", e)
        return False
    watcher.numprocesses = n
    log.info("shoal: starting %d worker(s)", n)
    return True
