"""The node-wide retained messages: one set, a copy on every member, stored in DATA_DIR/router.

A RETAIN from a member replaces (empty payload: removes) the message of its
topic and goes to every other member as RETAINED; with a token, the sender
gets CONFIRM once it is in the router's store (the publisher's PUBACK waits for
it) and, clustered, once the agent has it in etcd and applied by every live node
(RETAINED with the ref, answered DELIVERED). $SYS topics (the workers' figures) are outside SHOAL_MAX_RETAINED_MESSAGES.
"""
from __future__ import annotations

import logging
import os

from common.logs import kv
from core import ops as o
from core.message import Message
from core.records import msg_from_wire, msg_to_wire

from .keys import Store, StoreError  # noqa: F401  (StoreError: read from here by router.py)
from .members import AGENT

log = logging.getLogger("shoal.router")

RETAINED_SWEEP = 60.0  # seconds between sweeps of expired retained messages
STORE = b"\x00store"  # stands for the router's store among those a pending CONFIRM waits for


class RetainedSet:
    def __init__(self, router):
        self.r = router
        self.messages: dict[str, Message] = {}
        self.store: Store | None = None
        self.next_sweep = 0.0
        self.sys_count = 0  # $SYS topics in self.messages

    def open_store(self) -> None:
        settings = self.r.settings
        if not settings.persistence:
            return
        path = os.path.join(str(settings.data_path), "router")
        self.store = Store(path, settings.sync)
        now = self.r.clock()
        for m in self.store.load_retained(now, settings.max_retained_messages):
            self.messages[m.topic] = m
        self.store.ready()
        self.store.flush()
        self.store.on_recovered = lambda: self.store.resync_retained(
            [m for t, m in self.messages.items() if not t.startswith("$SYS/")], self.r.clock())
        log.info("store opened", extra=kv(path=path, retained=len(self.messages)))

    def wire(self, now: float) -> list:
        """The set as it goes in a WELCOME."""
        return [msg_to_wire(m, now) for m in self.messages.values() if not m.expired(now)]

    def retain(self, sender: bytes | None, msg: list, token=None) -> None:
        """A retained message (or its removal); with a token, CONFIRM to the sender
        once it is in the router's store."""
        r = self.r
        now = r.clock()
        m = msg_from_wire(msg, now)
        sys_topic = m.topic.startswith("$SYS/")  # workers' figures: outside the limit
        if m.payload:
            if m.topic not in self.messages:
                limit = r.settings.max_retained_messages
                if sys_topic:
                    self.sys_count += 1
                elif len(self.messages) - self.sys_count >= limit:
                    log.warning("retained message limit reached", extra=kv(topic=m.topic, limit=limit))
                    if token is not None:
                        r.send(sender, o.Confirm(token, True))
                    return
            self.messages[m.topic] = m
        elif self.messages.pop(m.topic, None) is not None and sys_topic:
            self.sys_count -= 1
        store = self.store
        if store is not None:
            store.set_retained(m, now)
        # cluster: the PUBACK waits for the agent too (in etcd, and applied by every node)
        agent = r.members.get(AGENT) if token is not None and not sys_topic and sender != AGENT else None
        ref = [sender, token] if agent is not None and agent.alive else None
        if token is not None:
            if ref is not None:
                waiting = r.forward.pending[(sender, token)] = {AGENT}
                if store is not None:
                    waiting.add(STORE)
                    store.after_commit(lambda ok: self._stored(sender, token, ok))
            elif store is not None:
                store.after_commit(lambda ok: r.send(sender, o.Confirm(token, ok)))
            else:
                r.send(sender, o.Confirm(token, True))
        if sender is not None:
            for ident, mb in r.members.items():
                if ident != sender and mb.alive:
                    r.send(ident, o.Retained(msg, ref) if ident == AGENT else o.Retained(msg))

    def _stored(self, sender: bytes, token, ok: bool) -> None:
        """The router's store has a retained message whose PUBACK also waits for the agent."""
        if ok:
            self.r.forward.delivered(STORE, [sender, token])
        elif self.r.forward.pending.pop((sender, token), None) is not None:
            self.r.send(sender, o.Confirm(token, False))

    def check(self, now: float) -> None:
        if now >= self.next_sweep:
            self.sweep(now)
        if self.store is not None and self.store.failed:
            self.store.probe()  # after a failed write: writes again once there is room

    def sweep(self, now: float) -> None:
        """Expired retained messages leave memory and the store (once a minute)."""
        self.next_sweep = now + RETAINED_SWEEP
        for topic, m in list(self.messages.items()):
            if m.expired(now):
                del self.messages[topic]
                if self.store is not None:
                    self.store.delete_retained(topic)
        if self.store is not None:
            self.store.maybe_compact()

    def flush(self) -> None:
        if self.store is not None and self.store.batch is not None:
            self.store.flush()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
