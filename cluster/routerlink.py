"""The agent's side of the node router: a DEALER socket (identity ``agent``) on the event loop.

Ops are packed one by one as they are queued and leave in one send per loop
pass; a message that came from another node is written into its op as the
bytes it arrived in (the msgpack array), never unpacked here.
"""
from __future__ import annotations

import asyncio
import logging
import struct

import msgpack
import zmq

from common.logs import kv
from common.settings import Settings
from core import ops as o
from core.ops import unpack_ops

log = logging.getLogger("shoal.agent")

IDENTITY = b"agent"
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)  # (ints: no enum.Flag per call)
_REMOTE_PUB = msgpack.packb(int(o.RemotePub.CODE))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 65536:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


class RouterLink:
    def __init__(self, settings: Settings, on_ops):
        self.settings = settings
        self.on_ops = on_ops  # callable(list of typed ops, core/ops.py)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, IDENTITY)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.out: list[bytes] = []  # packed ops
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle = None
        self.paused = False  # not reading from the router (a peer queue is full: push back)
        self.packer = msgpack.Packer(use_bin_type=True)

    def connect(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock.connect(self.settings.router_endpoint)
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._readable)

    def close(self) -> None:
        if self.loop is not None:
            try:
                self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except Exception:
                pass
        self._flush(final=True)
        self.sock.close(0)

    # -- sending ------------------------------------------------------------
    def queue(self, op) -> None:
        self.out.append(self.packer.pack(op.to_wire()))
        self._schedule()

    def queue_first(self, op) -> None:
        self.out.insert(0, self.packer.pack(op.to_wire()))
        self._schedule()

    def queue_remote_pub(self, body: bytes, normal: bool, groups: list, token, at: float,
                         origin: list | None = None) -> None:
        """[REMOTE_PUB, msg, normal, groups, token, at(, origin)] with msg the bytes as they came."""
        p = self.packer.pack
        if origin is None:
            self.out.append(b"\x96" + _REMOTE_PUB + body + p(normal) + p(groups) + p(token) + p(at))
        else:
            self.out.append(b"\x97" + _REMOTE_PUB + body + p(normal) + p(groups) + p(token) + p(at) + p(origin))
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None and self.loop is not None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self, final: bool = False) -> None:
        self._flush_handle = None
        if not self.out or self.sock.closed:  # (an op queued while the agent stops, after close)
            return
        ops, self.out = self.out, []
        data = _array_header(len(ops)) + b"".join(ops)
        try:
            self.sock.send(data, NOBLOCK)
        except zmq.Again:
            self.out = ops + self.out
            if not final and self.loop is not None:
                self._flush_handle = self.loop.call_later(0.005, self._flush)
            return
        self._readable()  # the zmq fd is edge-triggered: look for input after a send

    # -- receiving ------------------------------------------------------------
    def pause(self, on: bool) -> None:
        if on == self.paused:
            return
        self.paused = on
        log.warning("peer queue full: not reading from the router" if on else "peer queue drained: reading again")
        if not on and self.loop is not None:
            self.loop.call_soon(self._readable)

    def _bad_op(self, err, w) -> None:
        log.warning("undecodable op from the router", extra=kv(error=str(err)[:200]))

    def _readable(self) -> None:
        sock = self.sock
        n = 0
        while not self.paused and sock.get(EVENTS) & POLLIN:
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            try:
                ops = unpack_ops(data, self._bad_op)
            except Exception:
                log.warning("undecodable message from the router", extra=kv(size=len(data)))
                continue
            try:
                self.on_ops(ops)
            except Exception:
                log.exception("error handling router ops")
            n += 1
            if n >= 200 and self.loop is not None:  # let the loop breathe; come back next pass
                self.loop.call_soon(self._readable)
                break
