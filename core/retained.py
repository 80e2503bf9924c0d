"""The key layout of retained messages, one for every store that keeps them (a
single worker's, the router's):

    r/<topic>                 [RETAINED, message]     (core/records.py; times as wall-clock deadlines)

`RetainedKeys` is mixed into a store class built on core/kv.py's KV.
"""
from __future__ import annotations

import logging

from common.logs import kv

from .kv import StoreError, pack, unpack
from .message import Message
from .records import UnsupportedFormat, retained_from, retained_record

log = logging.getLogger("shoal.store")

RETAINED = b"r/"  # r/<topic>


def retained_key(topic: str) -> bytes:
    return RETAINED + topic.encode()


class RetainedKeys:
    """Retained messages in a KV (self): set, delete, resync, load."""

    def set_retained(self, m: Message, now: float) -> None:
        if m.topic.startswith("$SYS/"):
            return  # broker figures are published anew after a restart
        if m.payload:
            self.put(retained_key(m.topic), pack(retained_record(m, now, self.wall())))
        else:
            self.delete(retained_key(m.topic))

    def delete_retained(self, topic: str) -> None:
        self.delete(retained_key(topic))

    def resync_retained(self, messages: list[Message], now: float) -> None:
        """Make the stored retained messages exactly `messages` (after a failure)."""
        db = self.reader()
        ops = [(k, None) for k in db.iterator(prefix=RETAINED, include_value=False)] if db is not None else []
        wall = self.wall()
        ops += [(retained_key(m.topic), pack(retained_record(m, now, wall))) for m in messages]
        self.write_group(ops)

    def load_retained(self, now: float, limit: int | None = None) -> list[Message]:
        """The retained messages; expired ones, and any beyond `limit`, are deleted."""
        out = []
        gone = []
        over = 0
        wall = self.wall()
        for key, value in self.iterate(RETAINED):
            try:
                m = retained_from(unpack(value), now, wall)
            except UnsupportedFormat as e:
                raise StoreError(f"store {self.path}: {e}") from None
            if m.expired(now):
                gone.append(key)
            elif limit is not None and len(out) >= limit:
                gone.append(key)
                over += 1
            else:
                out.append(m)
        if over:
            log.warning("more retained messages stored than SHOAL_MAX_RETAINED_MESSAGES allows; deleted the rest",
                        extra=kv(path=self.path, limit=limit, deleted=over))
        for key in gone:
            self.delete(key)
        return out
