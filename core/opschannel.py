"""A member's side of the node's ops channel (router/ops.py), shared by the workers
(worker/ops_link.py) and the cluster agent (cluster/opslink.py).

A DEALER with the member's identity on ``Settings.ops_endpoint``: the member sends BEATs and
answers the router's ASKs (figures for /metrics, the lists shoalctl shows). The subclass names
itself, says how it beats, and answers through ``answer(what, args)``.
"""
from __future__ import annotations

import asyncio
import logging

import zmq

from common.logs import kv

from . import ops as o
from .ops import pack, unpack_ops

log = logging.getLogger("shoal.ops")


class OpsChannel:
    identity: bytes = b""
    sock = None
    loop = None
    _reading = False

    def answer(self, what: str, args: dict) -> dict:
        return {"error": f"unknown question {what!r}"}

    def on_op(self, op) -> None:
        """An op from the router other than ASK (the workers: LEASE)."""

    # -- the socket ------------------------------------------------------------------
    def open(self, endpoint: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)
        self.sock.connect(endpoint)
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._readable)

    def shut(self) -> None:
        if self.sock is not None:
            try:
                self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except Exception:  # the loop is closing
                pass
            self.sock.close(0)
            self.sock = None

    def _send(self, ops: list) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(pack(ops), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the router is not there (yet): it asks again, and beats come every second
        if not self._reading:
            self._readable()  # the zmq fd is edge-triggered: look for input after a send

    def _readable(self) -> None:
        self._reading = True
        try:
            self._read_all()
        finally:
            self._reading = False

    def _read_all(self) -> None:
        while self.sock is not None and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                data = self.sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                ops = unpack_ops(data)
            except Exception:
                log.warning("undecodable message on the ops socket",
                            extra=kv(member=self.identity.decode(), size=len(data)))
                continue
            for op in ops:
                if op.__class__ is not o.Ask:
                    self.on_op(op)
                    continue
                try:
                    payload = self.answer(op.what, op.args or {})
                except Exception as e:
                    log.exception("error answering an admin question",
                                  extra=kv(member=self.identity.decode(), what=op.what))
                    payload = {"error": f"{type(e).__name__}: {e}"}
                self._send([o.Answer(op.req, payload)])
