"""The cluster agent: the node's member in etcd and its gateway to the other nodes.

To its router the agent is one more member whose filters are the union of
the other nodes' routes, so a publish leaves a worker only when some node
wants it, and reaches the agent once whatever that node's subscriber count.
To etcd it writes this node's membership (a leased ``nodes/<node>``) and this
node's aggregated filters (``routes/<node>/<filter>``, one key per filter
whatever its local subscriber count, batched into transactions), and it keeps
a cache of everybody's through one watch. Retained messages live in etcd too
(``retained/<topic>``): the change with the highest etcd revision wins on
every node. docs/cluster.md has the whole picture.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import time

import grpc
import msgpack
from aetcd.exceptions import RevisionCompactedError

from common.logs import kv
from common.settings import Settings
from core import ops as o
from core.ops import WIRE_VERSION
from core.peerdata import packb
from mqtt import SubscriptionTrie

from .drain import Drain
from .fence import Fence
from .leader import Leader
from .moves import Moves
from .ownership import Ownership
from .wills import Wills
from .opslink import AgentOps
from .etcd import NODES, RANGE_END, RANGE_START, RETAINED, ROUTES, Etcd, read_range
from .peers import CLUSTER_WIRE, PeerOut, PeerService
from .replay import Replay, parse_since
from .routerlink import RouterLink
from .routersend import RouterSends
from . import keepalive, tcplink

log = logging.getLogger("shoal.agent")

FIRST_SYNC_WAIT = 2.0  # seconds the agent waits for etcd before it registers with its router anyway
WRITE_RETRY = 0.5  # seconds before a failed etcd write is tried again
TXN_OPS = 100  # operations per etcd transaction (etcd's default limit is 128)
TXN_BYTES = 1024 * 1024  # bytes of keys and values per transaction (etcd's default request limit is 1.5 MiB)
TXN_PARALLEL = 8  # transactions of one writer pass in flight at once
BACKOFF_MAX = 5.0  # seconds between etcd reconnect attempts at most
DRAIN_TIMEOUT = 7.0  # seconds a stopping agent waits for its workers' sessions (circus waits 10)


def _txn_chunks(sized: list) -> list:
    """Operations cut into transactions of at most TXN_OPS operations and TXN_BYTES
    bytes (a bigger single operation goes alone)."""
    chunks, cur, size = [], [], 0
    for item in sized:
        if cur and (len(cur) >= TXN_OPS or size + item[1] > TXN_BYTES):
            chunks.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += item[1]
    if cur:
        chunks.append(cur)
    return chunks


class DuplicateName(Exception):
    pass


class WatchCompacted(Exception):
    """etcd compacted revisions this node's watch had not seen (args[0]: the compaction revision)."""


def _well_formed(body: bytes, topic: str) -> list | None:
    """A message from a peer is checked before it goes to the router (one bad
    message must not cost the router the batch it travels in); it still goes on
    as the bytes it came in. Returns the decoded message, or None."""
    try:
        w = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        return None
    if (type(w) is list and len(w) >= 7 and w[0] == topic and type(w[1]) is bytes
            and w[2] in (0, 1, 2) and type(w[3]) is bool and (w[4] is None or type(w[4]) is dict)
            and (w[5] is None or type(w[5]) in (int, float)) and type(w[6]) is str):
        return w
    return None


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class Agent:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.node = settings.node
        self.instance = os.urandom(8).hex()
        self.etcd = Etcd(settings.etcd_client_endpoints)
        self.link = RouterLink(settings, self.on_router_ops)
        self.stopping = asyncio.Event()
        self.epoch = None
        self.welcomed = asyncio.Event()
        self.first_sync = asyncio.Event()
        self.retained_merged = False  # this node's retained messages that etcd lacked are in etcd
        # this node's side
        self.local_refs: dict[str, int] = {}  # filter -> local members (workers) that hold it
        self.published: set[str] = set()  # this node's filters as written in etcd
        # filters whose key may have to change in etcd; the writer looks at these only, so a
        # subscription costs the same with 1,000 filters as with 300,000 (routes_resync: all)
        self.route_dirty: set[str] = set()
        self.routes_resync = True
        self.gen = 0  # bumped by every change of local_refs / retained_out
        self.flushed_gen = 0
        self.flushed_rev = 0
        self.flush_waiters: list[tuple[int, asyncio.Future]] = []
        self.dirty = asyncio.Event()
        self.retained_out: dict[str, bytes | None] = {}  # topic -> value to write (no payload: a tombstone)
        self._tomb_lease: tuple[int, float] | None = None  # (lease id, monotonic time to stop using it)
        self.router_retained: dict[str, list] = {}  # from WELCOME: pushed to etcd when etcd lacks them
        self.etcd_retained: set[str] = set()  # topics etcd held at the first sync
        self.pending_versions: dict[int, bool] = {}  # route versions of the router -> done
        # the cluster's side
        self.lease_id = 0
        self.connected = False
        self.joined_once = False
        self.members: dict[str, dict] = {}  # node -> its nodes/ value (this node included)
        # the other nodes' routes: filter -> nodes, in one trie that is both the table and its
        # matcher (a set of filters per node and a count per filter beside it cost about 150
        # bytes per route: 100 MiB at 666,667 routes); node names are interned (one str each)
        self.trie = SubscriptionTrie()
        self.remote_filters = 0  # distinct filters other nodes hold
        self._names: dict[str, str] = {}
        self.retained_revs: dict[str, int] = {}  # topic -> mod revision applied
        self.applied_rev = 0
        self.rev_waiters: list[tuple[int, asyncio.Future]] = []
        self._rev_check = None
        self.peers: dict[str, PeerOut] = {}
        self.shared_cursor: dict[tuple, int] = {}
        # forwarding
        self.refs: dict[tuple, set] = {}  # (router ident, token) -> nodes that have not confirmed
        self.tokens = itertools.count(1)
        self.remote_tokens: dict[int, tuple] = {}  # our REMOTE_PUB token -> (Origin, seq, body, normal, groups)
        self.router_syncs: dict[int, asyncio.Future] = {}
        self._router_sync: tuple | None = None  # (applied revision when sent, task) of the router SYNC in flight
        self._peer_syncs: dict[int, asyncio.Task] = {}  # etcd revision -> the Sync round for it
        self.service = PeerService(self)
        self.replay = Replay(self)  # publishes that raced a subscription on another node
        self.ownership = Ownership(self)  # sessions/owners/<client id> (issue 11)
        self.wills = Wills(self)  # wills/<client id>
        self.leader = Leader(self)  # the leader key and its duties
        self.drain = Drain(self)  # graceful leave: sessions to the other nodes
        self.moves = Moves(self)  # what arrives for a session that moved between nodes
        # SHOAL_CLUSTER_ROUTER_SENDS: the router sends the publishes; the agent tells it the peers
        self.router_sends = RouterSends(self) if settings.cluster_router_sends and settings.cluster_link == "direct" \
            else None
        self.peer_seqs: dict[str, itertools.count] = {}  # node -> seqs of our links to it (cluster/peers.py)
        self.fence = Fence(self)  # lease lost: the node stops serving
        self.draining = False
        self.ops = AgentOps(self)
        self.server: grpc.aio.Server | None = None
        # bytes of one peer frame received at most: the setting, and always room for one message
        self.max_frame = max(settings.cluster_max_frame, settings.max_packet_size + 65536)
        self.link_server = None  # SHOAL_CLUSTER_LINK=tcp (cluster/tcplink.py)
        self.link_address: str | None = None  # its host:port, in this node's record
        self.data_address: str | None = None  # SHOAL_CLUSTER_LINK=direct: the router's data link (from WELCOME)
        self.dropped_qos0 = 0
        self.malformed = 0  # messages from peers that were not a message
        self.expired_in_queue = 0  # messages whose Message Expiry ran out while queued for this node
        self.data_fallbacks = 0  # direct data links given up for the Link (cluster/peers.py check_fallback)
        self.forwarded = 0
        self.received_count = 0
        self.frames_sent = 0  # gRPC frames on the peer links, both directions (acks included)
        self.frames_received = 0
        self.lease_file = os.path.join(str(settings.data_path), "cluster-lease")
        self.member_before = settings.cluster_member_file.exists()  # (a member before this start)
        self.status_file = os.path.join(str(settings.run_dir), f"shoal-{settings.port}-cluster.json")

    # -- lifecycle -----------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if "/" in self.node or not self.node:
            log.error("cannot start: SHOAL_NODE_NAME must be set and hold no '/'", extra=kv(name=self.node))
            return 3
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_frame),
                                               *keepalive.server_options(self.settings)])  # (cluster/keepalive.py)
        self.service_handler = self.service
        from proto import cluster_pb2_grpc as pbg

        pbg.add_PeerServicer_to_server(self.service, self.server)
        addr = self.settings.cluster_address
        try:
            port = self.server.add_insecure_port(addr)
        except RuntimeError:
            port = 0
        if not port:
            log.error("cannot start: cannot listen on SHOAL_CLUSTER_ADDR", extra=kv(addr=addr))
            return 3
        await self.server.start()
        if self.settings.cluster_link == "tcp":
            link_addr = self.settings.cluster_link_addr or f"{addr.rpartition(':')[0]}:0"
            try:
                self.link_server = await tcplink.serve(link_addr, self.service.Link, self.max_frame,
                                                      self.settings.cluster_link_dead_after)
            except OSError as e:
                log.error("cannot start: cannot listen on SHOAL_CLUSTER_LINK_ADDR", extra=kv(addr=link_addr, error=str(e)))
                return 3
            self.link_address = f"{link_addr.rpartition(':')[0]}:{self.link_server.port}"
        self.ops.connect()  # at once: /ready needs the node joined; /metrics shows stats()
        tasks = [loop.create_task(self._etcd_main()), loop.create_task(self._writer())]
        tasks.append(loop.create_task(self.leader.run()))  # issue 11: leader and its duties
        # register with the router holding the other nodes' routes already (an agent
        # restarted by circus then replaces its old filters without a gap), unless etcd
        # takes long: then at once, and the routes follow
        try:
            await asyncio.wait_for(self.first_sync.wait(), FIRST_SYNC_WAIT)
        except asyncio.TimeoutError:
            pass
        self.link.connect()
        self.hello()
        ping = loop.create_task(self._ping())
        log.info("agent serving", extra=kv(addr=addr, link=self.link_address or self.settings.cluster_link, etcd=",".join(self.etcd.endpoints),
                                           pid=os.getpid()))
        self.write_status()
        stop = loop.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if stop in done and self.connected:
            await self.drain.leaving(DRAIN_TIMEOUT)  # issue 11: the workers' sessions to other nodes first
        code = 0
        for t in tasks:
            if t in done and t.cancelled():  # (not by us: we cancel them below)
                log.error("agent task ended by a cancellation", extra=kv(task=t.get_coro().__qualname__))
                code = 1
            elif t in done and t.exception() is not None:
                if isinstance(t.exception(), DuplicateName):
                    code = 4
                else:
                    log.error("agent task failed", exc_info=t.exception())
                    code = 1
        for t in tasks:
            t.cancel()
        ping.cancel()
        await self.leave()
        return code

    async def leave(self) -> None:
        """SIGTERM: the node leaves at once (its lease, and every key under it, goes)."""
        self.connected = False
        if self.leader.lease_id and self.etcd.client is not None:
            try:  # (the leader key goes at once: the next leader need not wait for its expiry)
                await asyncio.wait_for(self.etcd.client.revoke_lease(self.leader.lease_id), 3.0)
            except Exception:
                pass  # (it expires by itself within half the lease TTL)
        if self.lease_id and self.etcd.client is not None:
            try:
                await asyncio.wait_for(self.etcd.client.revoke_lease(self.lease_id), 3.0)
                log.info("left the cluster", extra=kv(lease=self.lease_id))
            except Exception as e:
                log.warning("could not revoke the lease; it expires by itself", extra=kv(error=str(e)[:200]))
            try:
                os.unlink(self.lease_file)
            except OSError:
                pass
        self.members.pop(self.node, None)
        self.write_status()
        for p in self.peers.values():
            p.close()
        await self.ownership.close()
        if self.link_server is not None:
            self.link_server.close()
        if self.server is not None:
            await self.server.stop(0.5)
        await self.etcd.reset()
        self.link.queue(o.Bye())
        self.ops.close()
        self.link.close()

    @property
    def joined(self) -> bool:
        """In etcd (membership, routes) and registered with this node's router."""
        return self.connected and self.welcomed.is_set()

    def stats(self) -> dict:
        """The agent's figures (numbers only), for /metrics as shoal_cluster_<key>."""
        peers = [p for n, p in self.peers.items() if n in self.members]
        return {
            "joined": int(self.joined),
            "nodes": len(self.members),
            "peers_connected": sum(1 for p in peers if p.connected),
            "peer_queued": sum(p.size() for p in peers),
            "remote_filters": self.remote_filters,
            "local_filters": len(self.local_refs),
            "forwarded_total": self.forwarded,
            "received_total": self.received_count,
            "frames_sent_total": self.frames_sent,
            "frames_received_total": self.frames_received,
            "dropped_qos0_total": self.dropped_qos0,
            "malformed_total": self.malformed,
            "expired_in_queue_total": self.expired_in_queue,
            "data_links": sum(1 for p in peers if p.data is not None),  # SHOAL_CLUSTER_LINK=direct
            "data_resent_total": sum(p.resent for p in peers),
            # peers whose data link had no connection for SHOAL_CLUSTER_DATA_FALLBACK_AFTER: their
            # publishes went over the Link (cluster/peers.py check_fallback); how many do now
            "data_fallbacks_total": self.data_fallbacks,
            "data_fallen_back": sum(1 for p in peers if p.fallen_back),
            "paused": int(self.link.paused),
            # owner records (cluster/ownership.py Batcher): transactions, records they carried
            "owner_txns_total": self.ownership.batcher.txns,
            "owner_records_total": self.ownership.batcher.records,
        }

    def write_status(self) -> None:
        """$SHOAL_RUN_DIR/shoal-<port>-cluster.json: joined or not, and the nodes seen
        (for readiness checks; $SYS/broker/cluster/... says the same to MQTT clients)."""
        data = {"node": self.node, "joined": self.joined, "nodes": sorted(self.members),
                "etcd": self.etcd.endpoints, "addr": self.settings.cluster_address}
        tmp = self.status_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.status_file)
        except OSError:
            pass

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.link.queue(o.Ping())

    def hello(self) -> None:
        """HELLO goes before anything queued meanwhile (the router ignores a member it does not know)."""
        self.link.queue_first(o.Hello(WIRE_VERSION, list(self.trie.filters()), [], []))
        for flt in self.trie.filters():
            if flt.startswith("$share/"):
                n = self.trie.count(flt)
                if n > 1:
                    self.link.queue(o.RouteAdd(flt, None, n))  # (the router weighs us by the nodes)

    # -- the router ---------------------------------------------------------------------
    def on_router_ops(self, ops: list) -> None:
        handlers = self._router_handlers
        if handlers is None:
            handlers = self._router_handlers = {
                o.Deliver: self._delivered_here,
                o.Confirm: self._confirmed,
                o.Routes: lambda op: self.local_routes(op.version, op.delta),
                o.Retained: lambda op: self.local_retained(op.msg, op.ref),
                o.Synced: self._synced,
                o.Welcome: self.welcome,
                o.TakeOwnership: self.ownership.on_op, o.Disown: self.ownership.on_op, o.Grant: self.ownership.on_op,
                o.Will: self.wills.on_op, o.WillFire: self.wills.on_op,
                o.Drained: self.drain.on_op,
                o.DeliverDirect: self.moves.on_direct,
                o.Pong: self._pong,
            }
            if self.router_sends is not None:
                handlers[o.PeerPub] = self.router_sends.on_peer_pub
        for op in ops:
            fn = handlers.get(op.__class__)
            if fn is not None:
                fn(op)

    _router_handlers = None

    def _delivered_here(self, op) -> None:
        if op.filter is not None:  # handed back for a new remote route (cluster/replay.py)
            self.replay.replayed(op.msg, op.filter, op.at)
        else:
            self.deliver(op.msg, op.normal, op.groups, op.ref)

    def _confirmed(self, op) -> None:
        pending = self.remote_tokens.pop(op.token, None)
        if pending is None:
            pending = self.moves.pending.pop(op.token, None)  # (a copy for a moved session)
        if pending is not None:
            pending[0].owned(pending[1])

    def _synced(self, op) -> None:
        fut = self.router_syncs.pop(op.token, None)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _pong(self, op) -> None:
        if self.epoch is not None and op.epoch != self.epoch:
            log.warning("router restarted: registering again", extra=kv(epoch=op.epoch, resent=len(self.remote_tokens)))
            self.epoch = None
            self.hello()
            self.refs.clear()  # the old router's publishes: its workers send them again
            for token, (origin, seq, body, normal, groups) in self.remote_tokens.items():
                # what the old router never confirmed goes to the new one
                self.link.queue_remote_pub(body, normal, groups, token, time.monotonic(),
                                           [origin.node, origin.instance, seq])
            for token, (origin, seq, d) in self.moves.pending.items():
                self.link.queue(d)  # (the same for the copies for moved sessions)

    def welcome(self, op) -> None:
        epoch, version, routes, retained = op.epoch, op.version, op.routes, op.retained
        self.epoch = epoch
        if op.data_addr != self.data_address and self.settings.cluster_link == "direct":
            self.data_address = op.data_addr  # where the router takes other nodes' publishes
            self._record_task = asyncio.get_running_loop().create_task(self._put_record())
        refs: dict[str, int] = {}
        for member, flt in routes:
            if member != "agent":
                refs[flt] = refs.get(flt, 0) + 1
        self.local_refs = refs
        if not self.retained_merged:
            self.router_retained = {w[0]: w for w in retained if not w[0].startswith("$SYS/")}
        self.pending_versions.clear()
        self.routes_resync = True
        self._changed()
        if op.sessions:
            self.ownership.verify_held(op.sessions)
        self.welcomed.set()
        if self.router_sends is not None:  # (after every WELCOME: the router's table has our filters anew)
            self.router_sends.hello()
        self.fence.resend()  # issue 11: the workers learn the lease at once (a LEASE before HELLO is dropped)
        if self.leader.name:
            self.leader.publish_sys()
        self._merge_retained()
        self.publish_sys()  # (joined: now registered with the router too)
        log.info("registered with the router", extra=kv(epoch=epoch, local_filters=len(refs)))

    def local_routes(self, version: int, delta: list) -> None:
        changed = False
        refs = self.local_refs
        for sign, member, flt, *rest in delta:
            if member == "agent":
                continue
            n = refs.get(flt, 0)
            if sign > 0:
                refs[flt] = n + 1
                if n == 0:
                    changed = True
                    self.route_dirty.add(flt)
                    self.replay.local_added(flt, rest[0] if rest else None)
            elif n > 0:
                if n == 1:
                    del refs[flt]
                    changed = True
                    self.route_dirty.add(flt)
                    self.replay.local_removed(flt)
                else:
                    refs[flt] = n - 1
        self.pending_versions[version] = False
        if changed:
            gen = self._changed()
            batch = self._route_batch
            if batch is None:
                # one wait for every version of this loop pass (a flood of SUBSCRIBEs brings
                # hundreds per read from the router): one task each cost more than the route
                batch = self._route_batch = [[], gen]
                asyncio.get_running_loop().create_task(self._ack_when_routed(batch))
            batch[0].append(version)
            batch[1] = gen
        else:
            self._version_done(version)

    _route_batch: list | None = None  # [route versions, the gen that covers them all] not yet waiting

    def _changed(self) -> int:
        self.gen += 1
        self.dirty.set()
        return self.gen

    async def _ack_when_routed(self, batch: list) -> None:
        """A ROUTE_ACK (and with it the SUBACK of the subscriber) waits until the
        route is in etcd and every live node applied it to its router. The batch takes
        the versions that come until this task first runs (the rest of the loop pass)."""
        if self._route_batch is batch:
            self._route_batch = None
        versions, gen = batch
        try:
            rev = await self._flushed(gen)
            if rev:
                await self._peers_synced(rev)
        finally:
            self._version_done(*versions)

    def _version_done(self, *versions: int) -> None:
        pv = self.pending_versions
        for version in versions:
            if version in pv:
                pv[version] = True
        ack = None
        while pv:
            v = next(iter(pv))
            if not pv[v]:
                break
            del pv[v]
            ack = v
        if ack is not None:
            self.link.queue(o.RouteAck(ack))

    def _flushed(self, gen: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if not self.connected and not (self.fence.on and self.owner_once):
            fut.set_result(0)  # etcd unreachable: local clients go on; etcd sync reconciles later
        elif not self.connected:
            # issue 11: a node that held a lease serves only under one; its workers may accept
            # clients again just before the full sync of a rejoin ends: their SUBACKs wait for
            # the routes in etcd (released anyway if etcd is lost again)
            self.flush_waiters.append((gen, fut))
        elif self.flushed_gen >= gen:
            fut.set_result(self.flushed_rev)
        else:
            self.flush_waiters.append((gen, fut))
        return fut

    def _release_flush_waiters(self, rev: int) -> None:
        keep = []
        for gen, fut in self.flush_waiters:
            if fut.done():
                continue
            if rev == 0 or gen <= self.flushed_gen:
                fut.set_result(rev)
            else:
                keep.append((gen, fut))
        self.flush_waiters = keep

    async def _peers_synced(self, rev: int) -> None:
        """Every live node applied the routes up to etcd revision rev (one round of
        Sync requests per revision, shared by every route version waiting for it)."""
        t = self._peer_syncs.get(rev)
        if t is None:
            t = self._peer_syncs[rev] = asyncio.get_running_loop().create_task(self._peers_synced_once(rev))
            t.add_done_callback(lambda _t, rev=rev: self._peer_syncs.pop(rev, None))
        await asyncio.shield(t)

    async def _peers_synced_once(self, rev: int) -> None:
        futs = [p.request_sync(rev) for n, p in self.peers.items() if n in self.members]
        if futs:
            await asyncio.wait(futs, timeout=self.settings.cluster_lease_ttl + 1.0)

    def local_retained(self, w: list, ref=None) -> None:
        """A retained message set (or cleared) on this node: into etcd. With a ref, the
        publisher's PUBACK waits (DELIVERED ref) until it is in etcd and every live node
        applied it, so a new subscriber anywhere sees it once the publisher is answered."""
        topic = w[0]
        if topic.startswith("$SYS/"):
            if ref is not None:
                self.link.queue(o.Delivered(ref))
            return
        if w[1]:
            expires_in = w[5]
            value = msgpack.packb([topic, w[1], w[2], w[3], w[4],
                                   None if expires_in is None else time.time() + expires_in, w[6], self.node], use_bin_type=True)
            self.retained_out[topic] = value
        else:
            self.retained_out[topic] = None  # (the writer puts a tombstone)
        gen = self._changed()
        if ref is not None:
            asyncio.get_running_loop().create_task(self._ack_retained(gen, ref))

    async def _ack_retained(self, gen: int, ref: list) -> None:
        try:
            rev = await self._flushed(gen)  # (0: etcd unreachable; it gets the message when back)
            if rev:
                await self._peers_synced(rev)
        finally:
            self.link.queue(o.Delivered(ref))

    async def routes_cluster_wide(self) -> None:
        """The routes this node's router has so far (an adopted session's) are in etcd and
        applied on every live node: a router SYNC (its ROUTES come before its SYNCED),
        then the SUBACK's wait (_ack_when_routed)."""
        await self.router_sync()
        rev = await self._flushed(self.gen)
        if rev:
            await self._peers_synced(rev)

    async def router_sync(self) -> None:
        """Every other member of this node applied the routes sent so far."""
        token = next(self.tokens)
        fut = asyncio.get_running_loop().create_future()
        self.router_syncs[token] = fut
        self.link.queue(o.Sync(token))
        try:
            await asyncio.wait_for(fut, self.settings.cluster_lease_ttl + 2.0)
        except asyncio.TimeoutError:
            self.router_syncs.pop(token, None)

    # -- forwarding ------------------------------------------------------------------------
    def deliver(self, msg: list, normal: bool, groups: list, ref) -> None:
        """A publish of this node that other nodes want: once to each of them."""
        topic = msg[0]
        targets: dict[str, list] = {}
        members = self.members
        me = self.node
        if normal:
            for node, _ in self.trie.match(topic):
                if node != me and node in members and node not in targets:
                    targets[node] = [True, []]
        if groups:
            wanted = {(g, f) for g, f in groups}
            for group in self.trie.match_shared(topic):
                key = (group.group, group.topic_filter)
                if key not in wanted:
                    continue
                cands = [n for n in group.members if n != me and n in members]
                if not cands:
                    continue
                i = self.shared_cursor.get(key, 0)
                self.shared_cursor[key] = i + 1
                node = cands[i % len(cands)]
                targets.setdefault(node, [False, []])[1].append([group.group, group.topic_filter])
        key = None
        if normal and not msg[3]:
            self.replay.sent(msg, [n for n, (nrm, _) in targets.items() if nrm])
        if ref is not None:
            key = (ref[0], ref[1])
            if not targets:
                self.link.queue(o.Delivered(ref))
                return
            self.refs[key] = set(targets)
        if not targets:
            return
        body = packb(msg)  # (one Packer for the process: msgpack.packb makes a new one per call)
        qos = msg[2]
        full = False
        for node, (nrm, grs) in targets.items():
            peer = self.peers.get(node)
            if peer is None:
                self.peer_confirmed(node, key)
                continue
            if qos == 0 and peer.size() >= self.settings.cluster_max_queued:
                self.dropped_qos0 += 1
                if self.dropped_qos0 == 1 or self.dropped_qos0 % 1000 == 0:
                    log.warning("peer queue full: QoS 0 message dropped", extra=kv(peer=node, topic=topic, dropped=self.dropped_qos0))
                continue
            peer.send(topic, body, nrm, grs, key, qos, msg=msg)
            self.forwarded += 1
            if peer.size() >= self.settings.cluster_max_queued:
                full = True
        if full:
            self.link.pause(True)

    def peer_confirmed(self, node: str, key) -> None:
        if key is None:
            return
        waiting = self.refs.get(key)
        if waiting is None:
            return
        waiting.discard(node)
        if not waiting:
            del self.refs[key]
            self.link.queue(o.Delivered(list(key)))  # ([sender, token], or a moved session's [.., client id])

    def check_pressure(self) -> None:
        if self.link.paused and all(p.size() < self.settings.cluster_max_queued // 2 for p in self.peers.values()):
            self.link.pause(False)

    def received(self, origin, frame) -> None:
        """A frame from another node's agent: its publishes into this node's router."""
        link = self.link
        now = time.monotonic()
        for p in frame.pubs:
            body = p.msg
            w = _well_formed(body, p.topic)
            if w is None:
                self.malformed += 1
                log.warning("malformed message from a peer dropped", extra=kv(peer=origin.node, topic=p.topic[:100],
                                                                              size=len(body), malformed=self.malformed))
                if p.seq:
                    origin.owned(p.seq)
                continue
            if p.queued_ms and w[5] is not None:
                # Message Expiry counts the time it waited in the sender's queue (a link down)
                left = w[5] - p.queued_ms / 1000.0
                if left <= 0:
                    self.expired_in_queue += 1
                    if p.seq:
                        origin.owned(p.seq)
                    continue
                w[5] = left
                body = msgpack.packb(w, use_bin_type=True)
            if p.HasField("direct"):  # for a session that moved here (cluster/moves.py)
                self.moves.arrived(origin, p, w)
                continue
            token = None
            if p.seq:
                st = origin.mark(p.seq)
                if st is True:
                    origin.owned(p.seq)  # sent again after a reconnect: it is here already
                    continue
                if st is False:
                    continue  # still on its way here: the ack follows
                token = next(self.tokens)
            groups = [[g.group, g.filter] for g in p.groups]
            where = None
            if token is not None:
                self.remote_tokens[token] = (origin, p.seq, body, p.normal, groups)
                where = [origin.node, origin.instance, p.seq]  # (the router takes each once)
                if p.origin_instance:  # (its router sent it first: SHOAL_CLUSTER_ROUTER_SENDS)
                    where = [origin.node, p.origin_instance, p.origin_seq]
            self.received_count += 1
            link.queue_remote_pub(body, p.normal, groups, token, now, where)
        for s in frame.syncs:
            asyncio.get_running_loop().create_task(self._answer_sync(origin, s.id, s.revision))

    async def _answer_sync(self, origin, sid: int, rev: int) -> None:
        """Answer once this node's watch reached rev and its router applied what it brought."""
        if self.applied_rev < rev:
            fut = asyncio.get_running_loop().create_future()
            self.rev_waiters.append((rev, fut))
            try:
                await asyncio.wait_for(fut, self.settings.cluster_lease_ttl + 1.0)
            except asyncio.TimeoutError:
                pass
        await self._router_synced_covering(rev)
        log.debug("route sync answered", extra=kv(peer=origin.node, revision=rev, applied=self.applied_rev))
        origin.sync_done(sid)

    async def _router_synced_covering(self, rev: int) -> None:
        """A router SYNC sent after the routes up to rev went to the router: one in
        flight that was sent late enough serves every request it covers."""
        cur = self._router_sync
        if cur is None or cur[0] < rev or cur[1].done():
            cur = self._router_sync = (self.applied_rev, asyncio.get_running_loop().create_task(self.router_sync()))
        await asyncio.shield(cur[1])

    def _check_rev_waiters(self) -> None:
        self._rev_check = None
        keep = []
        for rev, fut in self.rev_waiters:
            if fut.done():
                continue
            if rev <= self.applied_rev:
                fut.set_result(True)
            else:
                keep.append((rev, fut))
        self.rev_waiters = keep

    def _applied(self, rev: int) -> None:
        if rev > self.applied_rev:
            self.applied_rev = rev
        if self.rev_waiters and self._rev_check is None:
            # after every event of this watch response (they are all queued already)
            self._rev_check = asyncio.get_running_loop().call_soon(self._check_rev_waiters)

    # -- the cluster's routes ----------------------------------------------------------------
    def _name(self, node: str) -> str:
        """The one str of a node's name (each route event decodes a new one)."""
        return self._names.setdefault(node, node)

    def _remote_add(self, node: str, flt: str, since: float | None = None) -> None:
        node = self._name(node)
        if not self.trie.add(flt, node, True):
            return  # (already held)
        self.replay.route_added(node, flt, since)
        n = self.trie.count(flt) - 1  # nodes that held it before
        if n == 0:
            self.remote_filters += 1
            log.debug("remote route added", extra=kv(peer=node, filter=flt))
            # (with the SUBSCRIBE's moment: router and workers hand back what raced it)
            self.link.queue(o.RouteAdd(flt, since))
        if self.router_sends is not None:  # (after our ROUTE_ADD, before the SYNC behind that SUBACK)
            self.router_sends.route(node, flt, True, since)
        if flt.startswith("$share/"):
            self.link.queue(o.RouteAdd(flt, None, n + 1))  # the router weighs us by the nodes

    def _remote_del(self, node: str, flt: str) -> None:
        if not self.trie.remove(flt, node):
            return
        if self.router_sends is not None:
            self.router_sends.route(node, flt, False)
        self.replay.route_removed(node, flt)
        n = self.trie.count(flt)
        if n <= 0:
            self.remote_filters -= 1
            self.link.queue(o.RouteDel(flt))
        elif flt.startswith("$share/"):
            self.link.queue(o.RouteAdd(flt, None, n))

    def _member_put(self, node: str, value: bytes) -> None:
        try:
            info = json.loads(value)
        except ValueError:
            log.warning("unreadable node record in etcd", extra=kv(peer=node))
            return
        old = self.members.get(node)
        self.members[node] = info
        if node == self.node:
            return
        if info.get("wire") != CLUSTER_WIRE:
            log.error("node speaks another cluster wire version: not linking to it; run the same Shoal version everywhere",
                      extra=kv(peer=node, wire=info.get("wire"), ours=CLUSTER_WIRE))
            return
        peer = self.peers.get(node)
        # SHOAL_CLUSTER_LINK=tcp and the peer serves it: its frames on a plain TCP link; else gRPC
        link = info.get("link") if self.settings.cluster_link == "tcp" else None
        # SHOAL_CLUSTER_LINK=direct and the peer's router listens for publishes: they go there
        data = info.get("data") if self.settings.cluster_link == "direct" else None
        if self.router_sends is not None:
            data = None  # (the router sends on the data link; what it hands here goes on the Link)
        if peer is not None and (peer.addr != info.get("addr") or peer.link_addr != link):
            # (a tcp link's port is new at every agent start) the queue stays: what that
            # node did not confirm goes again on the new link, as after a link flap
            peer.relink(info["addr"], link)
        if peer is not None:
            peer.set_data(data)  # (its router restarted: a new port; what it did not confirm goes again)
        if peer is None:
            p = self.peers[node] = PeerOut(self, node, info["addr"], link, data)
            p.acked_hook = self.check_pressure
        if self.router_sends is not None:
            self.router_sends.peer_put(node)
        if old is None:
            log.info("node joined", extra=kv(peer=node, addr=info.get("addr"), nodes=len(self.members)))
            self.publish_sys()

    def _member_del(self, node: str) -> None:
        if self.members.pop(node, None) is None:
            return
        if node == self.node:
            log.warning("our node record vanished from etcd (lease lost): joining again")
            self.connected = False
            return
        log.info("node left", extra=kv(peer=node, nodes=len(self.members)))
        self._drop_peer(node)
        self.leader.node_left(node)
        self.publish_sys()

    def _drop_peer(self, node: str) -> None:
        peer = self.peers.pop(node, None)
        if peer is None:
            return
        if self.router_sends is not None:
            self.router_sends.peer_gone(node)  # (what the router holds for it counts as done)
        for key in peer.close():
            self.peer_confirmed(node, key)  # that node is gone: nothing there will own it
        for key in list(self.refs):
            self.peer_confirmed(node, key)
        self.check_pressure()

    def _retained_put(self, topic: str, value: bytes, rev: int) -> None:
        try:
            t, payload, qos, retain, props, expires_at, origin, _node = msgpack.unpackb(value, raw=False, strict_map_key=False)[:8]
        except Exception:
            log.warning("unreadable retained record in etcd", extra=kv(topic=topic))
            return
        self.retained_revs[topic] = rev
        expires_in = None
        if expires_at is not None:
            expires_in = expires_at - time.time()
            if expires_in <= 0:
                return
        self.link.queue(o.Retain([topic, payload, qos, retain, props, expires_in, origin]))

    def _retained_del(self, topic: str) -> None:
        self.retained_revs.pop(topic, None)
        self.link.queue(o.Retain([topic, b"", 0, True, None, None, ""]))

    def publish_sys(self) -> None:
        """$SYS/broker/cluster/...: retained on this node (and to current subscribers)."""
        nodes = sorted(self.members)
        for topic, payload in (
            ("$SYS/broker/cluster/nodes", _json(nodes)),
            ("$SYS/broker/cluster/nodes/count", str(len(nodes)).encode()),
            ("$SYS/broker/cluster/joined", b"1" if self.joined else b"0"),
        ):
            w = [topic, payload, 0, True, None, None, ""]
            self.link.queue(o.Retain(w))
            self.link.queue(o.Pub(w, None, None))
        self.write_status()

    # -- etcd -----------------------------------------------------------------------------
    async def _etcd_main(self) -> None:
        backoff = 0.2
        failures = 0
        while not self.stopping.is_set():
            try:
                client = await self.etcd.connect()
                sent = time.monotonic()
                await self._join(client)
                await self.fence.joined(client, sent)
                rev = await self._full_sync(client)
                if failures:
                    log.info("etcd reachable again", extra=kv(etcd=self.etcd.endpoint))
                failures = 0
                backoff = 0.2
                keep = asyncio.get_running_loop().create_task(self._keepalive(client))
                try:
                    while True:
                        try:
                            await self._watch(client, rev + 1, keep)
                            break
                        except WatchCompacted as e:
                            # (this node fell behind and etcd compacted what it had not read yet)
                            log.warning("etcd compacted past this node's watch: reading the whole state again",
                                        extra=kv(compacted=e.args[0], watched_from=rev + 1))
                            rev = await self._full_sync(client)
                finally:
                    keep.cancel()
            except DuplicateName:
                raise
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                if self.connected or failures == 1 or failures % 20 == 0:
                    log.warning("etcd unreachable; retrying (local clients are still served)",
                                extra=kv(etcd=",".join(self.etcd.endpoints), tried=self.etcd.endpoint,
                                         error=(str(e) or type(e).__name__).splitlines()[0][:200]))
            was = self.connected
            self.connected = False
            self._release_flush_waiters(0)
            if was:
                self.publish_sys()
            await self.etcd.reset()
            try:
                await asyncio.wait_for(self.stopping.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _mark_member(self) -> None:
        path = self.settings.cluster_member_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"node": self.node, "joined": time.time()}) + "\n")
            self.member_before = True
        except OSError as e:
            log.warning("could not write the cluster member mark", extra=kv(path=str(path), error=str(e)[:200]))

    @property
    def owner_once(self) -> bool:
        """This node held a lease, in this agent's life or before (cluster_member_file)."""
        return self.joined_once or self.member_before

    def _read_lease_file(self) -> int:
        try:
            with open(self.lease_file) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def _join(self, client) -> None:
        """Hold nodes/<node> under a lease of this node (the one a previous agent
        of this node held, when it is still alive: the routes under it stay)."""
        lease_id = self.lease_id or self._read_lease_file()
        ours = {lease_id} - {0}  # leases this node held: a key under one of them is this node's own
        if lease_id:
            info = await client.get_lease_info(lease_id, keys=False)
            if info.TTL <= 0:
                lease_id = 0
                self.ownership.lapsed = True  # (what the router holds under it is stale)
        if not lease_id:
            lease = await client.lease(self.settings.cluster_lease_ttl)
            lease_id = lease.id
            os.makedirs(os.path.dirname(self.lease_file) or ".", exist_ok=True)
            with open(self.lease_file, "w") as f:
                f.write(str(lease_id))
        if lease_id != self.lease_id:
            self.ownership.lease_changed()  # (the records under the old lease went with it)
        self.lease_id = lease_id
        key = NODES + self.node.encode()
        value = self._record()
        tx = client.transactions
        ok, _ = await client.transaction(compare=[tx.create(key) == 0], success=[tx.put(key, value, lease_id)], failure=[])
        if not ok:
            cur = await client.get(key)
            # (an expired lease of ours may still hold the key for a moment: etcd deletes
            # the keys of an expired lease shortly after it reports it gone)
            if cur is not None and cur.lease != lease_id and cur.lease not in ours:
                try:
                    other = json.loads(cur.value)
                except ValueError:
                    other = {}
                msg = (f"a live node already holds the name {self.node!r} (agent at {other.get('addr')}, "
                       f"MQTT at {other.get('mqtt')}): give this node another SHOAL_NODE_NAME")
                log.error("cannot join: %s", msg, extra=kv(etcd=self.etcd.endpoint))
                print(f"shoal agent {self.node}: cannot join the cluster: {msg}", flush=True)
                # the whole node refuses to start: stop circusd, our parent
                try:
                    os.kill(os.getppid(), signal.SIGTERM)
                except OSError:
                    pass
                raise DuplicateName(msg)
            await client.put(key, value, lease=lease_id)

    _record_task = None

    def _record(self) -> bytes:
        """This node's nodes/ value."""
        st = self.settings
        api = f"http://{st.metrics_host or st.host}:{st.metrics_port}" if st.metrics_port else None
        record = {"addr": st.cluster_address, "workers": st.workers, "api": api,
                  "wire": CLUSTER_WIRE, "instance": self.instance, "mqtt": f"{st.host}:{st.port}"}
        if self.link_address:
            record["link"] = self.link_address  # SHOAL_CLUSTER_LINK=tcp: peers dial this for Peer.Link's frames
        if self.data_address:
            record["data"] = self.data_address  # SHOAL_CLUSTER_LINK=direct: peers send publishes to our router there
        return _json(record)

    async def _put_record(self) -> None:
        """The record again (the router's data address is new: it (re)started)."""
        client = self.etcd.client
        if not self.connected or client is None or not self.lease_id:
            return  # (the next join writes it)
        try:
            await client.put(NODES + self.node.encode(), self._record(), lease=self.lease_id)
        except Exception as e:
            log.warning("could not update this node's record", extra=kv(error=str(e)[:200]))

    async def _write_txn(self, client, chunk: list) -> int:
        """One transaction; one that etcd refuses as too large is split, and a retained
        message too large for etcd alone is left out (it stays on this node), so one big
        message never holds up the writes after it. Returns the highest revision written."""
        try:
            _, responses = await client.transaction(compare=[], success=[op for op, _, _ in chunk], failure=[])
        except Exception as e:
            text = str(e)
            if "too large" not in text and "larger than max" not in text:
                raise
            if len(chunk) > 1:
                rev = 0
                for one in chunk:
                    rev = max(rev, await self._write_txn(client, [one]))
                return rev
            _, size, topic = chunk[0]
            log.error("retained message too large for etcd: kept on this node only; raise etcd's --max-request-bytes",
                      extra=kv(topic=(topic or "")[:200], size=size, error=text.splitlines()[0][:200]))
            return 0
        rev = 0
        for r in responses:
            kind = r.WhichOneof("response")
            if kind == "response_put":
                rev = max(rev, r.response_put.header.revision)
            elif kind == "response_delete_range":
                rev = max(rev, r.response_delete_range.header.revision)
        return rev

    async def _tombstone_lease(self, client) -> int:
        """The lease cleared retained messages are written under: granted for
        SHOAL_CLUSTER_RETAINED_TOMBSTONE_TTL, used for half of that, never renewed, so
        etcd deletes each tombstone between half that time and that time after it."""
        now = time.monotonic()
        if self._tomb_lease is None or now >= self._tomb_lease[1]:
            ttl = self.settings.cluster_retained_tombstone_ttl
            lease = await client.lease(ttl)
            self._tomb_lease = (lease.id, now + ttl / 2)
        return self._tomb_lease[0]

    async def _keepalive(self, client) -> None:
        ttl = self.settings.cluster_lease_ttl
        every = max(0.3, ttl / 3.0)
        while True:
            due = time.monotonic() + every
            await asyncio.sleep(every)
            sent = time.monotonic()
            if sent - due > every / 2:
                # (the loop was busy that long: what starves the keep-alive fences the node)
                log.warning("lease keep-alive late", extra=kv(late_s=round(sent - due, 3), ttl=ttl))
            reply = await client.refresh_lease(self.lease_id)
            if reply is None or reply.TTL <= 0:
                self.fence.lost()
                raise ConnectionError("lease expired")
            self.fence.kept(sent)  # issue 11: the workers know until when they may serve

    async def _full_sync(self, client) -> int:
        """Read every node, route and retained message at one revision; make the caches
        (and this node's keys in etcd) agree with it."""
        rev, resp = await read_range(client, RANGE_START, RANGE_END)
        nodes: dict[str, bytes] = {}
        routes: dict[str, set[str]] = {}
        retained: dict[str, tuple[bytes, int]] = {}
        mine: set[str] = set()
        for item in resp:
            k = item.key
            if k.startswith(NODES):
                nodes[k[len(NODES):].decode()] = item.value
            elif k.startswith(ROUTES):
                node, _, flt = k[len(ROUTES):].decode().partition("/")
                if node == self.node:
                    mine.add(flt)
                else:
                    routes.setdefault(node, set()).add(flt)
            elif k.startswith(RETAINED):
                retained[k[len(RETAINED):].decode()] = (item.value, item.mod_revision)
        for node in [n for n in self.members if n not in nodes]:
            self._member_del(node)
        for node, value in nodes.items():
            self._member_put(node, value)
        gone = [(flt, node) for flt, node in self.trie.pairs() if flt not in routes.get(node, ())]
        for flt, node in gone:
            self._remote_del(node, flt)
        for node, flts in routes.items():
            for flt in flts:
                self._remote_add(node, flt)
        for topic in [t for t in self.retained_revs if t not in retained]:
            self._retained_del(topic)
        for topic, (value, mrev) in retained.items():
            if self.retained_revs.get(topic) != mrev:
                self._retained_put(topic, value, mrev)
        self.published = mine
        self.routes_resync = True
        self.connected = True
        self.joined_once = True
        if not self.member_before:
            self._mark_member()
        self.etcd_retained = set(retained)
        self._merge_retained()
        self.first_sync.set()
        if self.router_sends is not None:
            self.router_sends.synced()
        self._applied(rev)
        self._changed()  # the writer makes etcd agree with the local routes
        self.ownership.verify_held(())  # (the router's ids that waited for etcd)
        log.info("joined the cluster", extra=kv(nodes=",".join(sorted(self.members)), revision=rev,
                                                remote_filters=self.remote_filters, lease=self.lease_id))
        self.publish_sys()
        return rev

    def _merge_retained(self) -> None:
        """Once, when both the router's retained set and etcd's are known: the retained
        messages this node kept while it was away that etcd lacks go to etcd (the union)."""
        if self.retained_merged or not self.joined_once or not self.welcomed.is_set():
            return
        self.retained_merged = True
        for topic, w in self.router_retained.items():
            if topic not in self.etcd_retained:
                self.local_retained(w)
        self.router_retained = {}

    async def _watch(self, client, start: int, keep: asyncio.Task) -> None:
        watch = await client.watch(RANGE_START, range_end=RANGE_END, start_revision=start)
        # one task reads the events while this one waits for it or for the keep-alive to
        # end (a future per event, as before, cost more than the event: 1,000,000 routes)
        reader = asyncio.ensure_future(self._read_watch(watch))
        try:
            done, _ = await asyncio.wait([reader, keep], return_when=asyncio.FIRST_COMPLETED)
            if keep in done:
                keep.result()  # raises why the lease is gone
                return
            reader.result()  # raises when the watch ended (WatchCompacted: etcd compacted past it)
        finally:
            if not reader.done():
                reader.cancel()
                reader.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                await asyncio.wait_for(watch.cancel(), 1.0)
            except Exception:
                pass

    async def _read_watch(self, watch) -> None:
        if not self.connected:
            return
        try:
            async for ev in watch:
                if not self.connected:
                    return
                self._event(ev)
        except RevisionCompactedError as e:
            raise WatchCompacted(e.compacted_revision) from None
        raise ConnectionError("etcd watch ended")

    def _event(self, ev) -> None:
        k = ev.kv.key
        rev = ev.kv.mod_revision
        put = ev.kind == "PUT"
        if k.startswith(NODES):
            node = k[len(NODES):].decode()
            if put:
                self._member_put(node, ev.kv.value)
            else:
                self._member_del(node)
        elif k.startswith(ROUTES):
            node, _, flt = k[len(ROUTES):].decode().partition("/")
            if node != self.node:
                if put:
                    self._remote_add(node, flt, parse_since(ev.kv.value))
                else:
                    self._remote_del(node, flt)
            elif not put and flt in self.published:
                self.published.discard(flt)  # (our lease went): the writer puts it back
                self.route_dirty.add(flt)
                self._changed()
        elif k.startswith(RETAINED):
            topic = k[len(RETAINED):].decode()
            if put:
                self._retained_put(topic, ev.kv.value, rev)
            else:
                self._retained_del(topic)
        self._applied(rev)

    async def _writer(self) -> None:
        """This node's filters and retained changes into etcd, many per transaction."""
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            if not self.connected or self.etcd.client is None:
                continue  # the next full sync sets dirty again
            client = self.etcd.client
            gen = self.gen
            refs, published = self.local_refs, self.published
            if not self.welcomed.is_set():
                # this node's filters are known once its router welcomed this agent; until then
                # etcd keeps what the last agent wrote (under the same lease). Writing the empty
                # set deleted every route of the node for a moment after an agent restart, and
                # publishes from other nodes meanwhile were confirmed and lost (chaos run)
                adds = dels = set()
            elif self.routes_resync:
                self.routes_resync = False
                self.route_dirty = set()
                adds = refs.keys() - published
                dels = published - refs.keys()
            else:
                dirty, self.route_dirty = self.route_dirty, set()
                adds = {f for f in dirty if f in refs and f not in published}
                dels = {f for f in dirty if f not in refs and f in published}
            retained, self.retained_out = self.retained_out, {}
            tx = client.transactions
            prefix = ROUTES + self.node.encode() + b"/"
            ops = [tx.put(prefix + f.encode(), self.replay.route_value(f), self.lease_id) for f in adds]
            ops += [tx.delete(prefix + f.encode()) for f in dels]
            sized = [(op, 0, None) for op in ops]  # (op, bytes, retained topic)
            rev = self.flushed_rev
            try:
                for topic, value in retained.items():
                    key = RETAINED + topic.encode()
                    if value is None:
                        # a clear is a record with no payload under a lease that ends it (a
                        # tombstone), not a delete: a node that comes back with the old message
                        # sees that it was cleared
                        value = msgpack.packb([topic, b"", 0, True, None, None, "", self.node], use_bin_type=True)
                        sized.append((tx.put(key, value, await self._tombstone_lease(client)), len(key) + len(value), topic))
                    else:
                        sized.append((tx.put(key, value), len(key) + len(value), topic))
                # the transactions of one pass go TXN_PARALLEL at a time, not one round trip
                # each in turn (their keys are distinct: a filter is added or deleted, a
                # retained topic written once per pass, so their order does not matter)
                chunks = _txn_chunks(sized)
                for i in range(0, len(chunks), TXN_PARALLEL):
                    revs = await asyncio.gather(*(self._write_txn(client, c) for c in chunks[i:i + TXN_PARALLEL]),
                                                return_exceptions=True)
                    for r in revs:
                        if isinstance(r, BaseException):
                            raise r
                    rev = max(rev, *revs)
            except Exception as e:
                # (etcd electing a leader, or gone: the SUBACKs waiting for this write wait
                # on; the router's SYNC deadline bounds them, and a lost connection releases
                # them in _etcd_main)
                log.warning("etcd write failed; trying again", extra=kv(error=str(e)[:200], ops=len(ops)))
                self._tomb_lease = None  # (in case it was that lease that is gone)
                for topic, value in retained.items():
                    self.retained_out.setdefault(topic, value)
                self.route_dirty |= adds | dels
                try:
                    await asyncio.wait_for(self.stopping.wait(), WRITE_RETRY)
                except asyncio.TimeoutError:
                    pass
                self.dirty.set()
                continue
            log.debug("written to etcd", extra=kv(adds=len(adds), dels=len(dels), retained=len(retained), revision=rev))
            self.published.update(adds)
            self.published.difference_update(dels)
            self.flushed_gen = gen
            self.flushed_rev = rev
            self._release_flush_waiters(rev)
