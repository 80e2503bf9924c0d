"""The direct data link (SHOAL_CLUSTER_LINK=direct): this agent's publishes for one other node
go straight to that node's router over ZeroMQ (core/peerdata.py has the wire), not through
that node's agent. The agents' gRPC Peer.Link stays for the route syncs.

Why: a message crossing nodes passed six Python processes (worker, router and agent on each
side), each costing a wake-up and a read and a write of every batch; the receiving agent did
nothing with the message but hand it to its router. docs/architecture.md has the figures.

What the peer's router has not confirmed stays in `PeerOut.unacked` and is sent again: when
it waited `RESEND_AFTER` (doubling to `RESEND_MAX` while nothing is confirmed: a stopped
peer), and, in seq order before anything newer, whenever a connection is made anew. The
router takes each (node, instance, seq) once (router/forward.py RemoteSeen), so QoS 2 stays
exactly once.

One connection at a time, made by us: ZeroMQ's own reconnect is off (RECONNECT_IVL -1) and
the socket queues only to a connection whose handshake is done (IMMEDIATE), so when a
connection is lost, what ZeroMQ held for it goes with the socket, nothing is sent until a new
socket completed its handshake, and the resend of what was not confirmed goes first on it
(with ZeroMQ reconnecting by itself, messages queued after the loss reached the router
before the resend of those the loss took: out of order per publisher). ZeroMQ heartbeats
(from SHOAL_CLUSTER_LINK_DEAD_AFTER) end a connection whose router went silent (a host gone,
a frozen process); a connect that hangs (packets dropped) ends after a third of it.

A data link that has no connection while messages wait for it for
SHOAL_CLUSTER_DATA_FALLBACK_AFTER, the agents' Link being up, makes `PeerOut` send that
peer's publishes over the Link (cluster/peers.py); this link goes on trying in the
background (backoff to `FALLBACK_RETRY_MAX`) and, once a handshake succeeds, the publishes
come back here.
"""
from __future__ import annotations

import asyncio
import logging
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.logs import kv
from core import peerdata
from core.ops import unpack

log = logging.getLogger("shoal.agent")

RESEND_AFTER = 1.0  # seconds an unconfirmed QoS 1/2 message waits before it is sent again
RESEND_MAX = 8.0  # ... doubling while the peer confirms nothing, up to this
RESEND_CHECK = 0.25  # seconds between looks at the oldest unconfirmed message
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)  # (ints: no enum.Flag per call)
SEND_RETRY = 0.005  # seconds before a send the socket refused (its queue full) is tried again
RECONNECT_FIRST = 0.05  # seconds before a lost or refused connection is tried again ...
RECONNECT_MAX = 2.0  # ... doubling to this while the publishes wait for the data link
FALLBACK_RETRY_MAX = 30.0  # ... or to this while they go over the Link (fallen back)

_LOST = peerdata.LOST_EVENTS


class DataLink:
    """The DEALER to one peer's router (made anew after every lost connection); Confirms and
    the socket's events read on the event loop."""

    def __init__(self, peer, addr: str):
        agent = peer.agent
        self.peer = peer
        self.addr = addr
        self.loop = asyncio.get_running_loop()
        self.identity = peerdata.identity(agent.node, agent.instance)
        self.dead_after = agent.settings.cluster_link_dead_after
        self.up = False  # a connection whose handshake succeeded: what we send goes there
        self.ever_up = False
        self.down_since = time.monotonic()  # no connection since then (while not up)
        self.failures = 0  # connections lost or refused in a row
        self.last_error = ""
        self.closed = False
        self.sock = self.mon = None
        self._retry = None
        self._connect()

    # -- the connection ------------------------------------------------------------------
    def _connect(self) -> None:
        self._retry = None
        if self.closed:
            return
        s, m = peerdata.dialler(self.identity, self.dead_after)
        self.sock, self.mon = s, m
        self.attempt_at = time.monotonic()
        self.fd = s.getsockopt(zmq.FD)
        self.mfd = m.getsockopt(zmq.FD)
        self.loop.add_reader(self.fd, self._readable)
        self.loop.add_reader(self.mfd, self._events)
        try:
            s.connect(f"tcp://{self.addr}")
        except zmq.ZMQError as e:  # (an address ZeroMQ cannot parse or resolve)
            self._lost(f"cannot connect: {e}")
            return
        self.loop.call_soon(self._events)  # (the fds are edge-triggered)

    def _events(self) -> None:
        mon = self.mon
        while not self.closed and mon is self.mon and mon is not None and mon.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            event = ev["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up = True
                self.failures = 0
                first = not self.ever_up
                self.ever_up = True
                self.peer.data_up(self, first)
                self.loop.call_soon(self._readable)
            elif event & _LOST:
                self._lost(peerdata.EVENT_NAMES.get(event, str(event)))
                return

    def check(self, now: float) -> None:
        """A connect that neither succeeded nor failed in twice the time ZeroMQ was given for
        it (its connect timeout and handshake interval) is given up here: a new socket."""
        if not self.up and self.sock is not None and now - self.attempt_at > self.dead_after * 4 / 3 + 1:
            self._lost("no connection in time")

    def _lost(self, why: str) -> None:
        """The connection went (or never came): a new socket after a backoff; what this one
        held for the router is resent on the next (PeerOut.data_up)."""
        was_up = self.up
        self.up = False
        self.last_error = why
        self._drop_socket()
        if was_up:
            self.down_since = time.monotonic()
        self.failures += 1
        most = FALLBACK_RETRY_MAX if self.peer.fallen_back else RECONNECT_MAX
        delay = min(RECONNECT_FIRST * 2 ** min(self.failures - 1, 20), most)
        if self.peer.fallen_back:
            delay = max(delay, 1.0)
        if not self.closed:
            self._retry = self.loop.call_later(delay, self._connect)
            self.peer.data_down(self, was_up, why)

    def _drop_socket(self) -> None:
        for fd in (getattr(self, "fd", None), getattr(self, "mfd", None)):
            if fd is not None:
                try:
                    self.loop.remove_reader(fd)
                except Exception:
                    pass
        self.fd = self.mfd = None
        s, m = self.sock, self.mon
        self.sock = self.mon = None
        if s is not None:
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            s.close(0)
        if m is not None:
            m.close(0)

    # -- sending and reading --------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """False: no connection, or the socket's queue is full (the peer does not read): try
        again later."""
        if not self.up:
            return False
        try:
            self.sock.send(data, NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self.loop.call_soon(self._readable)  # (the zmq fd is edge-triggered: look after a send)
        return True

    def _readable(self) -> None:
        if self.closed or self.sock is None:
            return
        sock = self.sock
        peer = self.peer
        n = 0
        while sock is self.sock and sock.get(EVENTS) & POLLIN:
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            try:  # (only ok ones: core/peerdata.confirmed_seqs, as the router's sender)
                seqs = peerdata.confirmed_seqs(unpack(data))
            except Exception:
                log.warning("undecodable answer on the data link", extra=kv(peer=peer.node, size=len(data)))
                continue
            peer.confirmed(seqs)
            n += 1
            if n >= 200:  # let the loop breathe
                self.loop.call_soon(self._readable)
                break

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.up = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._drop_socket()

