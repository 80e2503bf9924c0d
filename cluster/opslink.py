"""The agent's side of the node's ops channel (router/ops.py): /ready and /metrics.

A DEALER (identity ``agent``) to ``Settings.ops_endpoint``. Every second a BEAT
whose ``serving`` flag says whether the node has joined the cluster (so /ready
needs it) and whose sixth element lists the other nodes with their admin API;
the answer to ASK ``stats`` is the agent's figures (``shoal_cluster_<key>``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import zmq

from common.logs import kv
from core import ops as o
from core.ops import WIRE_VERSION, pack, unpack_ops

log = logging.getLogger("shoal.agent")

BEAT_INTERVAL = 1.0


class AgentOps:
    def __init__(self, agent):
        self.agent = agent
        self.started = time.time()
        self.sock = None
        self.loop = None
        self._task = None

    def connect(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, b"agent")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)
        self.sock.connect(self.agent.settings.ops_endpoint)
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._readable)
        self._task = self.loop.create_task(self._beats())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.sock is not None:
            try:
                self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            except Exception:
                pass
            self.sock.close(0)
            self.sock = None

    async def _beats(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(BEAT_INTERVAL)

    def beat(self) -> None:
        a = self.agent
        peers = [{"node": n, "api": info.get("api")} for n, info in sorted(a.members.items()) if n != a.node][:1000]
        self._send([o.Beat("agent", os.getpid(), a.joined, self.started, peers, WIRE_VERSION)])

    def _send(self, ops: list) -> None:
        try:
            self.sock.send(pack(ops), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the router is not there (yet): beats come every second
        self._readable()  # the zmq fd is edge-triggered: look for input after a send

    def _readable(self) -> None:
        sock = self.sock
        while sock is not None and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                data = sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                ops = unpack_ops(data)
            except Exception:
                log.warning("undecodable message on the ops socket", extra=kv(size=len(data)))
                continue
            for op in ops:
                if op.__class__ is not o.Ask:
                    continue
                req, what = op.req, op.what
                payload = self.agent.stats() if what == "stats" else {"error": f"the agent does not answer {what!r}"}
                try:
                    sock.send(pack([o.Answer(req, payload)]), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
