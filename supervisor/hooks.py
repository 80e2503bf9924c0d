"""circusd hooks named in circus.ini."""
from __future__ import annotations

import logging
import sys

from common.settings import SettingsError, load, unknown_variables

log = logging.getLogger("circus")

EXIT_BAD_SETTINGS = 2


def check_settings(watcher, arbiter, hook_name, **kwargs) -> bool:
    """Before the node's first process starts (the router watcher, which circus
    starts first): every SHOAL_* value is checked. A bad one stops circusd with
    exit status 2, naming the variable, its value and what is allowed, instead
    of starting processes that cannot work; an unknown SHOAL_ variable is
    reported with the closest known name (a likely typo) and the node starts."""
    for name, close in unknown_variables():
        hint = f"; did you mean {close}?" if close else ""
        log.warning("shoal: unknown setting %s (ignored)%s", name, hint)
    try:
        load()
    except SettingsError as e:
        for problem in e.problems:
            log.error("shoal: invalid setting %s", problem)
            print(f"shoal: invalid setting {problem}", file=sys.stderr)
        if not any(w.processes for w in arbiter.iter_watchers()):
            # nothing runs yet: end circusd itself (SystemExit is not an Exception,
            # so circus's hook wrapper lets it through and circusd exits with it)
            print("shoal: not starting; fix the settings above", file=sys.stderr)
            raise SystemExit(EXIT_BAD_SETTINGS)
        return False  # processes run already (a later restart of this watcher): keep them
    return True


def apply_worker_count(watcher, arbiter, hook_name, **kwargs) -> bool:
    """Run SHOAL_WORKERS worker processes (default: one per core)."""
    try:
        n = max(1, load().workers)
    except SettingsError as e:  # a bad setting: say so, and refuse to start
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
        on = load().clustered
    except SettingsError as e:
        log.error("shoal: invalid SHOAL_* setting: %s", e)
        return False
    watcher.numprocesses = 1 if on else 0
    if on:
        log.info("shoal: clustering on: starting %s", watcher.name)
    return True


def embedded_etcd_only(watcher, arbiter, hook_name, **kwargs) -> bool:
    """The embedded etcd member runs only when SHOAL_ETCD_INITIAL_CLUSTER is set."""
    try:
        on = bool(load().etcd_initial_cluster.strip())
    except SettingsError as e:
        log.error("shoal: invalid SHOAL_* setting: %s", e)
        return False
    watcher.numprocesses = 1 if on else 0
    if on:
        log.info("shoal: starting the embedded etcd member")
    return True
