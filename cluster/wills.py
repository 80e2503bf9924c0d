"""Wills that fire exactly once cluster-wide (issue 11), the agent's side.

While a client with a will is connected, its will is in etcd as
``wills/<client id>``: msgpack ``[node, msg, delay]`` (msg in the node wire form,
its expiry as an interval), not leased, so that it outlives its node. Whoever
deletes the record publishes the will, and deletes are compare-and-swaps, so a
will is published once:

- the owner node, when its worker says the will is due (``WILL_FIRE``: the
  connection went without DISCONNECT, its will delay passed or its session
  ended): the delete compares the value this node wrote;
- the leader (cluster/leader.py), for the records of a node that is gone, once
  their will delay has passed since the leader saw the node go: the delete
  compares the revision it read;
- the new owner of the id, at once, when the record is a dead node's (the old
  session ended: its will is due now).

A normal DISCONNECT deletes the record (compared with the value this node
wrote); a new connection of the id on any node replaces it (the old will is
cancelled by the reconnection). A node that comes back after it was taken for
dead finds its records gone and publishes nothing again. With etcd
unreachable the node decides alone (as for ownership): it publishes.
"""
from __future__ import annotations

import asyncio
import logging
import time

import msgpack

from common.logs import kv
from core import ops as o

log = logging.getLogger("shoal.agent")

WILLS = b"wills/"


def decode(value: bytes):
    """[node, msg, delay] of a wills/ record, or None."""
    try:
        node, msg, delay = msgpack.unpackb(value, raw=False, strict_map_key=False, use_list=True)[:3]
        return node, msg, float(delay or 0)
    except Exception:
        return None


class Wills:
    def __init__(self, agent):
        self.agent = agent
        self.written: dict[str, bytes] = {}  # client id -> value this node wrote
        self.fired = 0  # figures: wills this node published
        self.fired_for_dead = 0

    def on_op(self, op) -> None:
        own = self.agent.ownership
        if op.__class__ is o.Will:
            if op.msg is None and op.client_id not in self.written:
                return  # no will, and none of ours in etcd (a handed-over one went with takeover_asked)
            own._spawn(op.client_id, self._set, op.client_id, op.msg, op.delay)
        elif op.__class__ is o.WillFire:
            own._spawn(op.client_id, self._fire, op.client_id, op.msg)

    async def _set(self, cid: str, msg, delay) -> None:
        ag = self.agent
        client = ag.etcd.client
        key = WILLS + cid.encode()
        if not ag.connected or client is None:
            self.written.pop(cid, None)
            return
        tx = client.transactions
        try:
            if msg is None:
                mine = self.written.pop(cid, None)
                if mine is not None:
                    await client.transaction(compare=[tx.value(key) == mine], success=[tx.delete(key)], failure=[])
                return
            cur = await client.get(key)
            if cur is not None:
                rec = decode(cur.value)
                if rec is not None and rec[0] != ag.node and rec[0] not in ag.members:
                    # the will of a session that ended with its node: due now
                    await self._delete_and_publish(client, key, cur.mod_revision, rec[1], cid, "previous owner gone")
            value = msgpack.packb([ag.node, msg, delay], use_bin_type=True)
            await client.put(key, value)
            self.written[cid] = value
        except Exception as e:
            log.warning("could not record a will in etcd", extra=kv(client=cid, error=str(e)[:200]))

    async def _fire(self, cid: str, msg) -> None:
        ag = self.agent
        client = ag.etcd.client
        if not ag.connected or client is None:
            if ag.fence.on:
                # cut off: whether it is ours to publish is decided once etcd is back (if our
                # lease expired meanwhile the leader has it); meanwhile nothing is published
                await self._later(cid, msg)
                return
            self.publish(msg)  # etcd unreachable, SHOAL_CLUSTER_LEASE_LOSS=serve: the node decides alone
            return
        key = WILLS + cid.encode()
        tx = client.transactions
        try:
            mine = self.written.pop(cid, None)
            if mine is not None:
                ok, _ = await client.transaction(compare=[tx.value(key) == mine], success=[tx.delete(key)], failure=[])
            else:
                # (the agent restarted since it wrote it): this node's record, read at one revision
                cur = await client.get(key)
                rec = decode(cur.value) if cur is not None else None
                ok = False
                if rec is not None and rec[0] == ag.node:
                    ok, _ = await client.transaction(compare=[tx.mod(key) == cur.mod_revision],
                                                     success=[tx.delete(key)], failure=[])
        except Exception as e:
            if ag.fence.on:
                # issue 11: cut off from etcd meanwhile (a partition): if the lease expires the
                # leader publishes it; whether it is still ours is asked again once the node
                # holds a lease (a will published here fired twice once the link came back)
                log.warning("could not settle a will in etcd; asking again once the lease is held",
                            extra=kv(client=cid, error=str(e)[:200]))
                await self._later(cid, msg)
                return
            log.warning("could not settle a will in etcd; publishing it", extra=kv(client=cid, error=str(e)[:200]))
            ok = True
        if ok:
            log.info("will published by its owner", extra=kv(client=cid))  # (audited by the chaos run)
            self.publish(msg)
        else:
            log.info("will not published: fired or cleared elsewhere", extra=kv(client=cid))

    async def forget(self, cid: str) -> None:
        """The session went to another node (takeover): our will record goes (the new
        connection has its own will, or none)."""
        mine = self.written.pop(cid, None)
        client = self.agent.etcd.client
        if mine is None or client is None:
            return
        tx = client.transactions
        key = WILLS + cid.encode()
        try:
            await client.transaction(compare=[tx.value(key) == mine], success=[tx.delete(key)], failure=[])
        except Exception as e:
            log.warning("could not remove a will record", extra=kv(client=cid, error=str(e)[:200]))

    async def _later(self, cid: str, msg) -> None:
        ag = self.agent
        deadline = time.monotonic() + 20 * ag.settings.cluster_lease_ttl
        while not (ag.connected and ag.fence.holding()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if ag.connected and ag.fence.holding():
            ag.ownership._spawn(cid, self._fire, cid, msg)
        else:
            log.warning("will dropped: etcd unreachable for too long (the leader publishes it)", extra=kv(client=cid))

    async def _delete_and_publish(self, client, key: bytes, rev: int, msg, cid: str, why: str) -> bool:
        tx = client.transactions
        ok, _ = await client.transaction(compare=[tx.mod(key) == rev], success=[tx.delete(key)], failure=[])
        if ok:
            self.fired_for_dead += 1
            log.info("will published for a node that is gone", extra=kv(client=cid, why=why))
            self.publish(msg)
        return ok

    def publish(self, msg: list) -> None:
        """A will into the cluster: this node's members, and every other node that wants it."""
        ag = self.agent
        self.fired += 1
        if msg[3]:
            ag.link.queue(o.Retain(msg))
            ag.local_retained(msg)
        ag.link.queue(o.Pub(msg, None, None))
        ag.deliver(msg, True, [], None)
