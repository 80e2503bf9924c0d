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

from core import ops as o
from core.ops import WIRE_VERSION
from core.opschannel import OpsChannel

log = logging.getLogger("shoal.agent")

BEAT_INTERVAL = 1.0


class AgentOps(OpsChannel):
    identity = b"agent"

    def __init__(self, agent):
        self.agent = agent
        self.started = time.time()
        self._task = None

    def connect(self) -> None:
        self.open(self.agent.settings.ops_endpoint)
        self._task = self.loop.create_task(self._beats())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.shut()

    async def _beats(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(BEAT_INTERVAL)

    def beat(self) -> None:
        a = self.agent
        peers = [{"node": n, "api": info.get("api")} for n, info in sorted(a.members.items()) if n != a.node][:1000]
        self._send([o.Beat("agent", os.getpid(), a.joined, self.started, peers, WIRE_VERSION)])

    def answer(self, what: str, args: dict) -> dict:
        return self.agent.stats() if what == "stats" else {"error": f"the agent does not answer {what!r}"}
