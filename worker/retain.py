"""Retained messages of a worker: kept in a trie, matched for new subscriptions,
expired on their deadline, stored when this worker owns them (a single worker;
with several the router keeps the node's). $SYS figures are outside the limit
and never stored: they are published anew."""
from __future__ import annotations

import logging

from common.logs import kv
from core.message import Message

log = logging.getLogger("shoal.broker")


class Retain:
    def __init__(self, broker):
        self.b = broker
        self.sys_count = 0  # $SYS topics in the trie (outside the retained limit)

    def set_retained(self, msg: Message) -> bool:
        """Retain (or with an empty payload, clear) msg; False when the limit refuses it.
        $SYS figures are outside the limit and are not stored: they are recomputed."""
        b = self.b
        topic = msg.topic
        sys_topic = topic.startswith("$SYS/")
        if msg.payload and b.retained.get(topic) is None:
            if sys_topic:
                self.sys_count += 1
            elif len(b.retained) - self.sys_count >= b.settings.max_retained_messages:
                log.warning("retained message limit reached", extra=kv(topic=topic, limit=b.settings.max_retained_messages))
                b.metrics.dropped_retained_limit += 1
                return False
        if b.store is not None and b.owns_retained and not sys_topic:
            b.store.set_retained(msg, b.now)
        if msg.payload:
            self.keep(msg)
        else:
            b.retained.delete(topic)
            b.timers.cancel(("retained", topic))
        return True

    def keep(self, msg: Message) -> None:
        b = self.b
        b.retained.set(msg.topic, msg)
        if msg.expires_at is not None:
            b.timers.schedule(("retained", msg.topic), msg.expires_at, lambda: self.expired(msg.topic, msg))
        else:
            b.timers.cancel(("retained", msg.topic))

    def expired(self, topic: str, msg: Message) -> None:
        """A retained message's expiry passed: it leaves memory and the store."""
        b = self.b
        if b.retained.get(topic) is not msg:
            return
        b.retained.delete(topic)
        b.timers.cancel(("retained", topic))
        if b.store is not None and b.owns_retained:
            b.store.delete_retained(topic)

    def retained_for(self, topic_filter: str) -> list[Message]:
        now = self.b.now
        out = []
        for msg in self.b.retained.match(topic_filter):
            if msg.expired(now):
                self.expired(msg.topic, msg)
                continue
            out.append(msg)
        return out

    def restore(self, messages: list[Message]) -> None:
        """Retained messages read from the store at start."""
        for m in messages:
            self.keep(m)
