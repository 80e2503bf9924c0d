"""Session state of one client id: no I/O here.

The connection (protocol.py) moves entries from the queue into the inflight
window and onto the wire; the broker routes messages into sessions.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from .message import Message

NEVER = 0xFFFFFFFF  # session expiry interval meaning "does not expire"


@dataclass(slots=True)
class SubOptions:
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    sub_id: int | None = None


class OutState(IntEnum):
    PUBLISHED = 0  # PUBLISH sent, waiting for PUBACK / PUBREC
    RELEASED = 1  # QoS 2: PUBREL sent, waiting for PUBCOMP


@dataclass(slots=True, eq=False)
class Delivery:
    """One message on its way to one session (a queue or inflight entry)."""

    msg: Message
    qos: int
    retain: bool
    sub_ids: tuple = ()
    group: tuple | None = None  # (share group, filter) when sent via a shared subscription
    state: OutState = OutState.PUBLISHED
    packet_id: int = 0
    seq: int = 0  # key of its queue record in the store (0: not stored)


@dataclass(slots=True)
class Will:
    message: Message
    delay: int = 0


@dataclass(slots=True, eq=False)
class Session:
    client_id: str
    expiry_interval: int = 0  # seconds; NEVER = no expiry
    subscriptions: dict[str, SubOptions] = field(default_factory=dict)
    inflight: dict[int, Delivery] = field(default_factory=dict)  # outgoing QoS 1/2, by packet id
    queue: deque = field(default_factory=deque)  # Delivery entries waiting for the window / reconnect
    incoming_qos2: set = field(default_factory=set)  # packet ids PUBREC'd, awaiting PUBREL
    will: Will | None = None
    conn: object | None = None  # the live connection, None while offline
    username: str | None = None
    expires_at: float | None = None  # clock time when offline, None while online or never
    will_at: float | None = None  # clock time of a delayed will
    next_pid: int = 1
    dropped: int = 0
    queue_stored: bool = False  # restored from the store: its queue is read on first use (Broker.load_queue)
    # this worker's store may hold records of it (it came from the store, or outlived its
    # connection at some time): its end deletes them; a session that never did has none
    on_disk: bool = False

    @property
    def online(self) -> bool:
        return self.conn is not None

    def allocate_pid(self) -> int:
        pid = self.next_pid
        inflight = self.inflight
        for _ in range(65535):
            if pid not in inflight:
                break
            pid = pid % 65535 + 1
        else:  # pragma: no cover - the window is at most 65535
            raise RuntimeError("no free packet identifier")
        self.next_pid = pid % 65535 + 1
        return pid
