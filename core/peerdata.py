"""The direct data link (SHOAL_CLUSTER_LINK=direct): a node's agent sends its publishes for
another node straight to that node's router, over ZeroMQ (tcp), so a message crossing nodes
passes worker -> router -> agent -> router -> worker (five processes, not six).

Both sides live here (the agent and the router import core/, never each other):
- the dialler (the sending agent) connects a DEALER whose identity names it:
  ``shoal-data/<wire>/<node>/<agent instance>``;
- one ZeroMQ message is one msgpack array of REMOTE_PUB ops (core/ops.py), the message as
  the bytes the sender packed; the token is the peer link's seq (0 / None for QoS 0), and
  the receiving router takes (node, instance, seq) as the message's origin, so a message
  sent again is taken once (router/forward.py RemoteSeen);
- the router answers with CONFIRM(seq, ok) ops once every member that got it owns it.
"""
from __future__ import annotations

import itertools
import struct

import msgpack
import zmq

from .ops import CONFIRM as _CONFIRM, CONFIRMS as _CONFIRMS, Op

DATA_WIRE = 1  # version of the direct data link; a dialler speaking another is refused
# the end of a dialler's instance that says it reads CONFIRMS ops (many seqs in one op, issue 10
# hotpath); the receiving router answers any other dialler (an older router, an agent) with one
# CONFIRM per seq, as before. Part of the instance itself, so that the origin a message carries
# when it goes through the agent instead ([instance, seq]) is the same string
CONFIRMS_MARK = "+c"
PREFIX = b"shoal-data/"
_REMOTE_PUB = msgpack.packb(int(Op.REMOTE_PUB))
_NIL = b"\xc0"
_TRUE = b"\xc3"
_FALSE = b"\xc2"
_EMPTY = b"\x90"


class BadIdentity(ValueError):
    """A dialler whose identity is not ours (or speaks another DATA_WIRE)."""


def identity(node: str, instance: str) -> bytes:
    return PREFIX + f"{DATA_WIRE}/{node}/{instance}".encode()


def parse_identity(ident: bytes) -> tuple[str, str]:
    """(node, instance) of a dialler; BadIdentity when it is not one of ours."""
    if not ident.startswith(PREFIX):
        raise BadIdentity("not a Shoal data link")
    try:
        wire, node, instance = ident[len(PREFIX):].decode().split("/")
    except ValueError:
        raise BadIdentity("malformed data link identity") from None
    if wire != str(DATA_WIRE):
        raise BadIdentity(f"data link wire {wire}, this node speaks {DATA_WIRE}: run the same Shoal version on every node")
    if not node or not instance:
        raise BadIdentity("malformed data link identity")
    return node, instance


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 65536:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


_packer = msgpack.Packer(use_bin_type=True)


def packb(obj) -> bytes:
    return _packer.pack(obj)


def aged(msg: list, queued_at: float, now: float) -> list | None:
    """msg (a message record) with its Message Expiry Interval less the time it waited in a
    sender's queue since queued_at; None when that ran out; msg itself when it has no
    interval or waited under a millisecond (the agent's and the router's senders)."""
    if msg[5] is not None:
        waited = now - queued_at
        if waited >= 0.001:
            left = msg[5] - waited
            if left <= 0:
                return None
            msg = list(msg)
            msg[5] = left
    return msg


def remote_pub(body: bytes, normal: bool, groups: list, seq: int) -> bytes:
    """One REMOTE_PUB op, body (the packed message) spliced in as it is: [17, msg, normal,
    groups, token, at]; at is None (the receiving router stamps its own clock)."""
    g = _packer.pack(groups) if groups else _EMPTY
    return b"\x96" + _REMOTE_PUB + body + (_TRUE if normal else _FALSE) + g + (_packer.pack(seq) if seq else _NIL) + _NIL


def batch(ops: list[bytes]) -> bytes:
    return array_header(len(ops)) + b"".join(ops)


def well_formed(w) -> bool:
    """A message from another node, checked before it reaches the members (one bad message
    costs only itself): [topic, payload, qos, retain, properties, expiry, origin, ...]."""
    return (type(w) is list and len(w) >= 7 and type(w[0]) is str and type(w[1]) is bytes
            and w[2] in (0, 1, 2) and type(w[3]) is bool and (w[4] is None or type(w[4]) is dict)
            and (w[5] is None or type(w[5]) in (int, float)) and type(w[6]) is str)


def confirmed_seqs(wires) -> list[int]:
    """The seqs a peer router's answer on a data link confirms, from its ops as wire lists
    (CONFIRMS [57, ok, [seq, ...]] and CONFIRM [29, seq, ok]; anything else is skipped). Only
    ok ones count: ok False says a receiver there died before it owned the message; that
    router forgot the origin, so the resend is routed anew. (Until 2026-12-02 a failed one
    counted as taken too, in both senders, and the publisher had its PUBACK for a message
    nobody owned.) For the router's sender (router/sender.py) and the agent's data link
    (cluster/datalink.py)."""
    seqs: list[int] = []
    if type(wires) is not list:
        return seqs
    for w in wires:
        if type(w) is list and len(w) > 2:
            if w[0] == _CONFIRMS:
                if w[1] is True and type(w[2]) is list:
                    seqs += [t for t in w[2] if type(t) is int]
            elif w[0] == _CONFIRM and type(w[1]) is int and w[2] is True:
                seqs.append(w[1])
    return seqs


def heartbeat_options(dead_after: float) -> list[tuple[int, int]]:
    """ZeroMQ socket options that end a connection silent for about dead_after seconds: a
    PING every third of it, the connection closed when nothing came for two thirds after one,
    and the other side told to close it after dead_after without traffic (both ends of the
    data link set them: the router's ROUTER, router/peerdata.py, and each DEALER,
    cluster/datalink.py)."""
    ms = int(dead_after * 1000)
    return [(zmq.HEARTBEAT_IVL, ms // 3), (zmq.HEARTBEAT_TIMEOUT, ms * 2 // 3), (zmq.HEARTBEAT_TTL, ms),
            (zmq.HANDSHAKE_IVL, ms // 3)]


# -- the dialler's socket (the agent's DataLink and the router's PeerLink) -------------------
LOST_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
EVENT_NAMES = {getattr(zmq, n): n[len("EVENT_"):].lower().replace("_", " ") for n in dir(zmq)
               if n.startswith("EVENT_") and isinstance(getattr(zmq, n), int)}
_monitor_ids = itertools.count(1)


def dialler(ident: bytes, dead_after: float) -> tuple:
    """A DEALER for a peer router's data port (not connected yet) and the PAIR its monitor
    reports the handshake and the losses to. One connection at a time, made by its owner:
    ZeroMQ's reconnect off (order after a loss), IMMEDIATE (nothing queued for a connection
    not made yet), heartbeats and TCP keep-alive from SHOAL_CLUSTER_LINK_DEAD_AFTER."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, ident)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1000)  # batches; beyond, the sender's own queue grows (push back)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, -1)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, max(1000, int(dead_after * 1000) // 3))
    for opt, value in heartbeat_options(dead_after):
        sock.setsockopt(opt, value)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
    endpoint = f"inproc://shoal-dialler-{next(_monitor_ids)}"
    sock.monitor(endpoint, zmq.EVENT_HANDSHAKE_SUCCEEDED | LOST_EVENTS)
    mon = ctx.socket(zmq.PAIR)
    mon.setsockopt(zmq.LINGER, 0)
    mon.connect(endpoint)
    return sock, mon
