"""The per-client publish rate limit (SHOAL_MAX_PUBLISH_RATE, issue 12 point 5).

A token bucket of one second's worth of PUBLISH packets (at least one). A
client past it is not disconnected: the worker stops reading its socket until
the bucket has a token again (back-pressure, as EMQX's message-rate limiter
does), so nothing it sent is lost and TCP slows it down. v5 DISCONNECT 0x96
(Message rate too high) would end the session of a client that only had a
burst; pausing is what DESIGN.md asks of every overloaded hop.
"""
from __future__ import annotations

import logging

from common.logs import kv

from .flow import Pause

log = logging.getLogger("shoal.conn")


class Sparse:
    """At most one log line a period for an event that can come by the thousand
    (refusals in a storm); says how many it held back."""

    __slots__ = ("period", "next_at", "held")

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self.next_at = 0.0
        self.held = 0

    def due(self, now: float) -> int | None:
        """None: stay quiet; else the number of events not logged since the last line."""
        if now < self.next_at:
            self.held += 1
            return None
        held, self.held = self.held, 0
        self.next_at = now + self.period
        return held


class PublishRate:
    __slots__ = ("rate", "burst", "tokens", "at", "pauses")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.at = now
        self.pauses = 0

    def take(self, now: float) -> float:
        """Spend one token: 0.0, or the seconds to wait until the bucket is out of debt."""
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - 1.0
        self.tokens = tokens
        self.at = now
        return 0.0 if tokens >= 0 else -tokens / self.rate


def count_publish(conn) -> None:
    """After a PUBLISH of a rate-limited client: pause reading when it is over its rate."""
    rate = conn.rate
    broker = conn.broker
    wait = rate.take(broker.clock())
    if not wait or conn.backlog is not None:
        return
    rate.pauses += 1
    broker.metrics.publish_throttled += 1
    if rate.pauses == 1:  # once per connection: a client over its rate would flood the log
        log.info("publish rate limit reached, reading paused",
                 extra=kv(client=conn.client_id, peer=conn.peer, limit=rate.rate))
    conn.suspend(Pause.RATE)
    broker.clock.call_later(wait, _resume, conn)


def _resume(conn) -> None:
    if conn.closed:
        return
    conn.last_rx = conn.broker.clock()  # the pause was ours, not the client's silence
    conn.resume(Pause.RATE)
