"""Graceful leave (issue 11): SIGTERM to a cluster node hands its persistent sessions to
the other nodes.

circus stops every process of the node at once. Each worker stops accepting,
disconnects its clients (v5 DISCONNECT 0x8B, server shutting down) and sends its
offline persistent sessions to the agent through the router (``DRAINED``). The
agent, which waits for every worker before it leaves, gives each session to
another live node in turn (gRPC ``AdoptSession``): that node writes itself as
the owner (compare-and-swap on the leaving node's record) and hands the session
to one of its workers (``ADOPT``). The worker drops what was adopted elsewhere
(``DRAIN_DONE``), keeps the rest in its store, and says ``BYE``; the router stops
once every member did. Then the agent revokes its lease and the node is gone. A
client reconnecting anywhere finds its session (pulled from the adopter by the
usual takeover if it lands on a third node).
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from common.logs import kv
from core import ops as o

from .keepalive import channel_options
from .ownership import OWNERS

log = logging.getLogger("shoal.agent")

ADOPT_TIMEOUT = 3.0  # seconds for one AdoptSession
PARALLEL = 32  # AdoptSession calls in flight at once


class Drain:
    def __init__(self, agent):
        self.agent = agent
        self.drained: set[str] = set()  # workers that handed their sessions
        self.all_drained = asyncio.Event()
        self.cursor = 0
        self.adopted_out = 0
        self.adopted_in = 0

    def on_op(self, op) -> None:
        if op.__class__ is o.Drained:
            self.agent.ownership._spawn_task(self._drained(op.member, op.states))

    async def leaving(self, timeout: float) -> None:
        """Wait (at most timeout) for every worker of the node to have drained."""
        self.agent.draining = True
        try:
            await asyncio.wait_for(self.all_drained.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("not every worker drained in time", extra=kv(drained=len(self.drained)))

    async def _drained(self, member: str, states: list) -> None:
        ag = self.agent
        adopted: list[str] = []
        targets = sorted(n for n in ag.members if n != ag.node)
        if states and targets and ag.connected:
            sem = asyncio.Semaphore(PARALLEL)

            async def one(st):
                cid = st[1]
                node = targets[self.cursor % len(targets)]
                self.cursor += 1
                async with sem:
                    if await self._adopt_on(node, cid, st):
                        adopted.append(cid)

            await asyncio.gather(*(one(st) for st in states))
        self.adopted_out += len(adopted)
        log.info("sessions handed to other nodes", extra=kv(member=member, sessions=len(states), adopted=len(adopted)))
        ag.link.queue(o.DrainDone(member, adopted))
        self.drained.add(member)
        if len(self.drained) >= ag.settings.workers:
            self.all_drained.set()

    async def _adopt_on(self, node: str, cid: str, state: list) -> bool:
        import msgpack

        from proto import cluster_pb2 as pb
        from proto import cluster_pb2_grpc as pbg

        own = self.agent.ownership
        addr = self.agent.members.get(node, {}).get("addr")
        if not addr:
            return False
        ch = own.channels.get(node)
        if ch is None or ch[0] != addr:
            ch = own.channels[node] = (addr, grpc.aio.insecure_channel(addr, options=channel_options(self.agent.settings)))
        try:
            reply = await pbg.PeerStub(ch[1]).AdoptSession(
                pb.AdoptRequest(client_id=cid, session=msgpack.packb(state, use_bin_type=True), node=self.agent.node,
                                token=own.owned.get(cid, 0)), timeout=ADOPT_TIMEOUT, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            log.warning("AdoptSession failed; the session stays in this node's store",
                        extra=kv(client=cid, peer=node, code=str(e.code())))
            return False
        if reply.ok:
            own.owned.pop(cid, None)
        return reply.ok

    async def adopt_asked(self, request):
        """Another node leaves and gives us one of its sessions: own it, then hold it."""
        import json

        import msgpack

        from proto import cluster_pb2 as pb

        ag = self.agent
        client = ag.etcd.client
        if not ag.connected or client is None or getattr(ag, "draining", False):
            return pb.AdoptReply(ok=False)
        cid = request.client_id
        key = OWNERS + cid.encode()
        tx = client.transactions
        mine = ag.ownership._value()
        cur = await client.get(key)
        if cur is None:
            ok, resp = await client.transaction(compare=[tx.create(key) == 0], success=[tx.put(key, mine, ag.lease_id)],
                                                failure=[])
        else:
            try:
                prev = json.loads(cur.value).get("node")
            except (ValueError, AttributeError):
                prev = None
            if prev != request.node:
                return pb.AdoptReply(ok=False)  # someone else owns it since: not the leaver's to give
            ok, resp = await client.transaction(compare=[tx.mod(key) == cur.mod_revision],
                                                success=[tx.put(key, mine, ag.lease_id)], failure=[])
        if not ok:
            return pb.AdoptReply(ok=False)
        ag.ownership.owned[cid] = resp[0].response_put.header.revision
        state = msgpack.unpackb(request.session, raw=False, strict_map_key=False, use_list=True)
        ag.link.queue(o.Adopt(cid, state))
        self.adopted_in += 1
        # the leaving node goes once we answer: the adopted session's routes are in cluster-wide
        # first (as a SUBACK's), so that no publish made meanwhile misses the session
        # (bounded well inside the leaver's ADOPT_TIMEOUT: a late answer would leave it a copy)
        try:
            await asyncio.wait_for(ag.routes_cluster_wide(), ADOPT_TIMEOUT / 2)
        except asyncio.TimeoutError:
            log.info("adopted session's routes not yet everywhere; answering anyway", extra=kv(client=cid))
        return pb.AdoptReply(ok=True)
