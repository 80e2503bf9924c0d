"""The direct data link (SHOAL_CLUSTER_LINK=direct): this agent's publishes for one other node
go straight to that node's router over ZeroMQ (core/peerdata.py has the wire), not through
that node's agent. The agents' gRPC Peer.Link stays for the route syncs.

Why: a message crossing nodes passed six Python processes (worker, router and agent on each
side), each costing a wake-up and a read and a write of every batch; the receiving agent did
nothing with the message but hand it to its router. docs/architecture.md has the figures.

What the peer's router has not confirmed stays in `PeerOut.unacked` and is sent again: at
once when the link is made anew (the node's record names a new address: its router
restarted), else when it waited `RESEND_AFTER` (doubling to `RESEND_MAX` while nothing is
confirmed: a stopped or cut-off peer). The router takes each (node, instance, seq) once
(router/forward.py RemoteSeen), so QoS 2 stays exactly once. ZeroMQ reconnects by itself
after a flap; what the connection lost is what the resend brings back.
"""
from __future__ import annotations

import asyncio
import logging

import zmq

from common.logs import kv
from core import ops as o
from core import peerdata
from core.ops import unpack_ops

log = logging.getLogger("shoal.agent")

RESEND_AFTER = 1.0  # seconds an unconfirmed QoS 1/2 message waits before it is sent again
RESEND_MAX = 8.0  # ... doubling while the peer confirms nothing, up to this
RESEND_CHECK = 0.25  # seconds between looks at the oldest unconfirmed message
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)  # (ints: no enum.Flag per call)
SEND_RETRY = 0.005  # seconds before a send the socket refused (its queue full) is tried again


class DataLink:
    """The DEALER to one peer's router; Confirms read on the event loop."""

    def __init__(self, peer, addr: str):
        agent = peer.agent
        self.peer = peer
        self.addr = addr
        self.loop = asyncio.get_running_loop()
        s = self.sock = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, peerdata.identity(agent.node, agent.instance))
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1000)  # batches; beyond, the queue in PeerOut grows (push back)
        s.setsockopt(zmq.RCVHWM, 100_000)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
        s.connect(f"tcp://{addr}")
        self.fd = s.getsockopt(zmq.FD)
        self.loop.add_reader(self.fd, self._readable)
        self.closed = False

    def send(self, data: bytes) -> bool:
        """False: the socket's queue is full (the peer does not read): try again later."""
        try:
            self.sock.send(data, NOBLOCK)
        except zmq.Again:
            return False
        finally:
            self.loop.call_soon(self._readable)  # (the zmq fd is edge-triggered: look after a send)
        return True

    def _readable(self) -> None:
        if self.closed:
            return
        sock = self.sock
        peer = self.peer
        n = 0
        while sock.get(EVENTS) & POLLIN:
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            try:
                ops = unpack_ops(data)
            except Exception:
                log.warning("undecodable answer on the data link", extra=kv(peer=peer.node, size=len(data)))
                continue
            peer.confirmed([op.token for op in ops if op.__class__ is o.Confirm])
            n += 1
            if n >= 200:  # let the loop breathe
                self.loop.call_soon(self._readable)
                break

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.fd)
        except Exception:
            pass
        self.sock.close(0)
