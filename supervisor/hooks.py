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


# -- cluster (issue 10) ------------------------------------------------------------
def cluster_only(watcher, arbiter, hook_name, **kwargs) -> bool:
    """The cluster agent runs only when clustering is configured
    (SHOAL_ETCD_ENDPOINTS or SHOAL_ETCD_INITIAL_CLUSTER); otherwise no process."""
    try:
        on = Settings().clustered
    except Exception as e:
        log.error("shoal: invalid SHOAL_* setting: %s", e)
        return False
    watcher.numprocesses = 1 if on else 0
    if on:
        log.info("shoal: clustering on: starting %s", watcher.name)
    return True


def embedded_etcd_only(watcher, arbiter, hook_name, **kwargs) -> bool:
    """The embedded etcd member runs only when SHOAL_ETCD_INITIAL_CLUSTER is set."""
    try:
        on = bool(Settings().etcd_initial_cluster.strip())
    except Exception as e:
        log.error("shoal: invalid SHOAL_* setting: %s", e)
        return False
    watcher.numprocesses = 1 if on else 0
    if on:
        log.info("shoal: starting the embedded etcd member")
    return True
