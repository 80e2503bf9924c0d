"""The router's store: its key layout on top of core/kv.py. The router keeps the
node-wide retained messages and nothing else:

    meta                        [FORMAT, created]       (core/kv.py)
    r/<topic>                   retained record         (core/retained.py)
"""
from __future__ import annotations

from core.kv import KV, StoreError  # noqa: F401 (re-exported)
from core.retained import RetainedKeys


class Store(RetainedKeys, KV):
    """$SHOAL_DATA_DIR/router: set_retained, delete_retained, resync_retained, load_retained."""
