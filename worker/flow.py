"""One owner of a connection's reading: the set of reasons it is paused.

Several parts of the worker stop reading from a client, each for its own
reason: the CONNECT waits for the node to grant the client id, a SUBSCRIBE
waits for the other workers' routes, the client is over its publish rate,
the router link cannot take more. Each says `pause(reason)` and, when its
reason is gone, `resume(reason)`; the socket is read again only once no
reason is left (as uvicorn's FlowControl owns a protocol's reading). Two
owners each switching the socket on their own is how a connection came to
be read while the router link was still full (issue 9, point 4).

Writing pressure is not a reason to stop reading: a subscriber whose socket
buffer is full still sends PUBACKs that must be read, or both ends block on
writing. A congested connection drops QoS 0 instead (protocol.Connection).
"""
from __future__ import annotations

from enum import IntEnum


class Pause(IntEnum):
    CONNECTING = 1  # CONNECT read: later packets wait for the password check and the node's grant
    SUBSCRIBING = 2  # a SUBSCRIBE waits until every other worker routes its filters here
    RATE = 3  # over SHOAL_MAX_PUBLISH_RATE until the bucket has a token again (limits.py)
    ROUTER = 4  # the router link cannot take more (router_link.RouterBridge)
    SUBSCRIBE_LIMIT = 5  # its worker has SHOAL_MAX_FILTERS_WAITING new filters waiting for routes


# reasons whose packets, already read, wait too (Connection.backlog): the
# router link only stops the socket, what was read before it is handled
HOLDS_PACKETS = frozenset((Pause.CONNECTING, Pause.SUBSCRIBING, Pause.RATE, Pause.SUBSCRIBE_LIMIT))


class FlowControl:
    """The reasons a connection's reading is paused; the transport reads only when there are none."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport) -> None:
        self.transport = transport
        self.reasons: set[Pause] = set()

    def holds_packets(self) -> bool:
        return not self.reasons.isdisjoint(HOLDS_PACKETS)

    def pause(self, reason: Pause) -> None:
        reasons = self.reasons
        if not reasons:
            t = self.transport
            if t is not None and not t.is_closing():
                t.pause_reading()
        reasons.add(reason)

    def resume(self, reason: Pause) -> None:
        reasons = self.reasons
        if reason not in reasons:
            return
        reasons.discard(reason)
        if not reasons:
            t = self.transport
            if t is not None and not t.is_closing():
                t.resume_reading()

    def forget(self, reason: Pause) -> bool:
        """Drop reason without reading yet (settle() decides); False if it was not there."""
        if reason not in self.reasons:
            return False
        self.reasons.discard(reason)
        return True

    def settle(self) -> None:
        """Read again if no reason is left."""
        if not self.reasons:
            t = self.transport
            if t is not None and not t.is_closing():
                t.resume_reading()

    def drain(self) -> None:
        """The connection is closing: read (and drop) what the client still sends,
        whatever paused it, so that its last packets do not make the kernel reset."""
        self.reasons.clear()
        t = self.transport
        if t is not None and not t.is_reading():
            t.resume_reading()
