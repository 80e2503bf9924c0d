"""What of a worker's sessions goes to its store, and the store's resync after a
failed write. A session is written when it outlives its connection (expiry
interval > 0) and persistence is on; its queue is read back on first use."""
from __future__ import annotations

import logging

from common.logs import kv
from core.session import Session

log = logging.getLogger("shoal.broker")


class Persist:
    def __init__(self, broker):
        self.b = broker

    def store_for(self, s: Session):
        """The store when this session's changes must be written (it outlives its
        connection and persistence is on), else None."""
        if s.expiry_interval:
            s.on_disk = True
            return self.b.store
        return None

    def save(self, s: Session) -> None:
        """Write the session record (not its queue) when the session outlives its connection."""
        b = self.b
        store = b.store if s.expiry_interval else None
        if store is not None and b.sessions.get(s.client_id) is s:
            s.on_disk = True
            store.save_session(s, b.now)

    def load_queue(self, s: Session) -> None:
        """A session restored from the store reads its queue on first use."""
        if s.queue_stored:
            b = self.b
            if b.store is None:
                s.queue_stored = False
            else:
                b.store.load_queue(s, b.now, b.settings.max_queued_messages)

    def store_state(self, s: Session) -> None:
        """Write a session's queue and windows (it arrived with them from elsewhere)."""
        store, now = self.b.store, self.b.now
        s.on_disk = True
        for d in s.queue:
            store.queued(s, d, now)
        for d in s.inflight.values():
            store.inflight(s, d, now)
        for pid in s.incoming_qos2:
            store.qos2_in(s, pid)

    def resync_store(self) -> None:
        """The store writes again after a failure: the changes dropped meanwhile are
        made good by writing every persistent session (and the retained messages) anew."""
        b = self.b
        store = b.store
        for s in list(b.sessions.values()):
            if not s.expiry_interval:
                continue
            if not s.queue_stored:  # (a queue still on disk was not touched meanwhile)
                store.delete_session(s.client_id, s)
                for d in s.queue:
                    d.seq = 0
                self.store_state(s)
            self.save(s)
        if b.owns_retained:
            store.resync_retained([m for t, m in b.retained.items() if not t.startswith("$SYS/")], b.now)
        log.warning("store rewritten after its failure", extra=kv(sessions=len(b.sessions)))
