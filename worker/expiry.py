"""Session expiry: an offline session ends when its expiry interval has passed
since its connection ended (3.1.1 persistent sessions: SHOAL_PERSISTENT_SESSION_EXPIRY)."""
from __future__ import annotations

import logging

from common.logs import kv
from core.session import Session

log = logging.getLogger("shoal.broker")


class Expiry:
    def __init__(self, broker):
        self.b = broker

    def schedule(self, session: Session) -> None:
        """End session at session.expires_at unless its client is back."""
        self.b.timers.schedule(("expire", session.client_id), session.expires_at, lambda s=session: self.expire(s))

    def cancel(self, client_id: str) -> None:
        self.b.timers.cancel(("expire", client_id))

    def expire(self, session: Session) -> None:
        b = self.b
        if session.conn is None and b.sessions.get(session.client_id) is session:
            log.info("session expired", extra=kv(client=session.client_id))
            b.end_session(session)
