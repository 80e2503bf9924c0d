"""The node's switchboard: a ZeroMQ ROUTER socket and a route table in Python.

Members (workers, the cluster agent) connect DEALER sockets with identity
``w<wid>`` (or ``agent``). The router keeps
- the route table: which member wants which filters (a SubscriptionTrie keyed
  by member), versioned; every change is broadcast as a delta;
- the session registry: which member holds which client id, and brokers the
  hand-over of a session between members;
- the node-wide retained messages (every member keeps a copy);
- the node-wide $SYS sums.
A publish from one member is forwarded once to each other member that wants it;
the ops for one member are batched into one send per loop pass.
"""
from __future__ import annotations

import itertools
from collections import deque
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import zmq

from common import logs
from common.logs import kv
from common.proc import die_with_parent
from common.settings import Settings
from common.wire import STALE, WIRE_VERSION, Op, Own, pack, unpack
from mqtt import SubscriptionTrie, topic_matches
from core.message import Message
from worker.metrics import Histogram, node_sums
from core.records import msg_from_wire, msg_to_wire
from .keys import Store, StoreError

from .admin import OpsService

log = logging.getLogger("shoal.router")

MEMBER_TIMEOUT = 3.0  # seconds without a PING before a member counts as gone
REPLAY_WINDOW = 0.5  # seconds of routed publishes kept for subscriptions whose route is late
REPLAY_MARGIN = 0.05  # QoS 0 read this long before a SUBSCRIBE counts as concurrent (worker/router_link.py)
CLAIM_TIMEOUT = 5.0  # seconds a hand-over may take before the claimant gets an empty session
HOLDER_RESTART_WAIT = 8.0  # seconds a claim waits for the dead holder of a session to be restarted
SETTLE_TIMEOUT = 3.0  # seconds after start that publishes wait for every worker to (re-)register
ROUTED = (Op.PUB, Op.SHARED_PUB, Op.DIRECT, Op.REMOTE_PUB)  # ops that need the whole route table
RETAINED_SWEEP = 60.0  # seconds between sweeps of expired retained messages
AGENT = b"agent"  # the cluster agent's identity (cluster/routerlink.py)
STORE = b"\x00store"  # stands for the router's store among those a pending CONFIRM waits for
DRAIN_WAIT = 8.0  # seconds a stopping cluster node's router waits for its members (circus waits 10)


@dataclass(slots=True)
class Member:
    ident: bytes
    name: str
    filters: dict = field(default_factory=dict)  # filter -> True
    last_seen: float = 0.0
    alive: bool = True
    stats: dict = field(default_factory=dict)
    acked: int = 0  # route version this member has applied
    lost: list = field(default_factory=list)  # filters dropped when it fell silent (back if it speaks again)
    orphans: set = field(default_factory=set)  # client ids granted elsewhere while it was gone
    bye: bool = False  # it said it is done (the node is stopping)


@dataclass(slots=True)
class Claim:
    client_id: str
    req: int
    claimant: bytes
    clean_start: bool
    deadline: float
    since: float = 0.0  # when the claim came (hand-over latency, /metrics)
    owning: int = 0  # cluster: 1 while the agent makes this node the owner (OWN), 2 once it answered


class Router:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.epoch = int.from_bytes(os.urandom(4), "big")
        self.version = 0
        self.trie = SubscriptionTrie()
        self.members: dict[bytes, Member] = {}
        self.registry: dict[str, bytes] = {}  # client id -> member ident
        self.claims: dict[str, list[Claim]] = {}  # client id -> queue of claims, head in progress
        # cluster (issue 11): client ids restored from a worker's store, not yet confirmed as
        # this node's in etcd; hand-overs the agent asked for (a session moving to another node)
        self.unverified: set[str] = set()
        self.leaving = 0.0  # cluster: SIGTERM received, stop at this time (or once every member said BYE)
        self.lease_op = None  # the agent's last LEASE, for workers that register later
        self.retained: dict[str, Message] = {}
        self.store: Store | None = None
        self.retained_sweep = 0.0
        self.sys_retained = 0  # $SYS topics in self.retained
        self.out: dict[bytes, list] = {}
        self.delta: list = []
        self.shared_cursor: dict[tuple, int] = {}
        self.syncs: list = []
        self.pending: dict[tuple, set] = {}
        self.share_weight: dict[tuple, int] = {}  # (agent, "$share/g/f") -> other nodes holding the group
        self.recent: deque = deque()  # (at, sender, msg, targets) of the last REPLAY_WINDOW seconds
        self.by_name: dict[str, bytes] = {}  # (sender, token) -> members that have not confirmed  # [ident, token, version, deadline] waiting for members to apply routes
        self.forwarded = 0
        self.handover_seconds = Histogram()  # CLAIM to GRANT of the claims another worker answered (HANDOFF)
        self.started = time.monotonic()
        self.settled = False  # every worker registered (or SETTLE_TIMEOUT passed)
        self.deferred: list = []  # (ident, op) routed once settled
        self._req = itertools.count(1)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.endpoint = settings.router_endpoint
        self.running = True
        # a SYNC (SUBACK) waits for every member; with a cluster agent that means every
        # live node, and a dead node's lease expires after SHOAL_CLUSTER_LEASE_TTL
        self.sync_timeout = settings.cluster_lease_ttl + 2.0 if settings.clustered else 1.0

    # -- plumbing ---------------------------------------------------------
    def open_store(self) -> None:
        """The node-wide retained messages live in DATA_DIR/router."""
        if not self.settings.persistence:
            return
        path = os.path.join(str(self.settings.data_path), "router")
        self.store = Store(path, self.settings.sync)
        now = time.monotonic()
        for m in self.store.load_retained(now, self.settings.max_retained_messages):
            self.retained[m.topic] = m
        self.store.ready()
        self.store.flush()
        self.store.on_recovered = lambda: self.store.resync_retained(
            [m for t, m in self.retained.items() if not t.startswith("$SYS/")], time.monotonic())
        log.info("store opened", extra=kv(path=path, retained=len(self.retained)))

    def bind(self) -> None:
        path = self.endpoint.removeprefix("ipc://")
        if self.endpoint.startswith("ipc://") and os.path.exists(path):
            os.unlink(path)  # a previous router's socket file (it died)
        self.sock.bind(self.endpoint)
        log.info("router serving", extra=kv(endpoint=self.endpoint, epoch=self.epoch, pid=os.getpid()))

    def send(self, ident: bytes, op: list) -> None:
        self.out.setdefault(ident, []).append(op)

    def flush(self) -> bool:
        """Send the batched ops; True when everything went out."""
        self.flush_delta_only()
        done = True
        for ident in list(self.out):
            ops = self.out[ident]
            try:
                self.sock.send_multipart([ident, pack(ops)], flags=zmq.NOBLOCK)
            except zmq.Again:
                done = False  # that member is slow: keep its ops, stop reading (push back)
                continue
            except zmq.ZMQError as e:
                if e.errno == zmq.EHOSTUNREACH:
                    self._member_gone(ident)  # (drops its ops itself)
                else:
                    raise
            self.out.pop(ident, None)
        return done

    def run(self) -> None:
        self.bind()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        ops = OpsService(self, poller)  # /metrics, /health, /ready, the admin API (router/admin.py)
        next_check = time.monotonic() + 0.5
        while self.running:
            backlog = bool(self.out)
            poller.modify(self.sock, zmq.POLLOUT if backlog else zmq.POLLIN)
            events = dict(poller.poll(100))
            if self.sock in events and not backlog:
                for _ in range(1000):  # a bounded batch per pass
                    try:
                        ident, data = self.sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.handle(ident, data)
            now = time.monotonic()
            if self.leaving and (now >= self.leaving or
                                 all(m.bye or not m.alive for m in self.members.values())):
                self.running = False
            ops.poll(events, now)
            if now >= next_check:
                next_check = now + 0.5
                self.check_timeouts(now)
            if self.store is not None and self.store.batch is not None:
                self.store.flush()
            self.flush()
        ops.close()
        if self.store is not None:
            self.store.close()
        self.sock.close(0)

    # -- ops ------------------------------------------------------------------
    def handle(self, ident: bytes, data: bytes) -> None:
        try:
            ops = unpack(data)
        except Exception:
            log.warning("undecodable message from a member", extra=kv(member=ident.decode(errors="replace")))
            return
        m = self.members.get(ident)
        now = time.monotonic()
        for op in ops:
            code = op[0]
            if code == Op.HELLO:
                m = self.hello(ident, op, now)
                continue
            if m is None:
                # a member we do not know (the router restarted): ask it to say hello
                self.send(ident, [Op.PONG, self.epoch, self.version])
                continue
            m.last_seen = now
            if not m.alive:
                self._revive(m)
            if not self.settled and code in ROUTED:
                # a route table without the workers that have not registered yet would
                # drop (and confirm) messages they want: wait for them
                self.deferred.append((ident, op))
                continue
            if code == Op.PUB:
                self.publish(ident, op[1], op[2] if len(op) > 2 else None, op[3] if len(op) > 3 else None)
            elif code == Op.DELIVERED:
                self.delivered(ident, op[1])
            elif code == Op.REMOTE_PUB:
                self.remote_publish(ident, op[1], op[2], op[3], op[4], op[5])
            elif code == Op.DIRECT:
                holder = self.registry.get(op[2])
                if holder is not None and holder != ident:
                    self.send(holder, [Op.DELIVER_DIRECT, *op[1:]])
            elif code == Op.ROUTE_ADD:
                if len(op) > 3:  # the agent: a shared group held on op[3] other nodes
                    self.share_weight[(ident, op[1])] = op[3]
                self.route_add(m, op[1], op[2] if len(op) > 2 else None)
            elif code == Op.PUB_TO:
                target = self.by_name.get(op[2])
                if target is not None and target != ident:
                    # to the agent with the filter and read time of the replay (cluster/replay.py)
                    self.send(target, [Op.DELIVER, op[1], True, [], None, *op[3:5]] if target == AGENT
                              else [Op.DELIVER, op[1], True, [], None])
            elif code == Op.ROUTE_DEL:
                self.route_del(m, op[1])
            elif code == Op.RETAIN:
                self.retain(ident, op[1], op[2] if len(op) > 2 else None)
            elif code == Op.CLAIM:
                self.claim(ident, op[1], op[2], op[3], now)
            elif code == Op.HANDOFF:
                self.handoff(ident, op[1], op[2], op[3])
            elif code == Op.RELEASE:
                if self.registry.get(op[1]) == ident:
                    del self.registry[op[1]]
                    self._disown(op[1])
            elif code == Op.OWNED:
                self.owned(op[1], op[2], op[3], op[4])
            elif code == Op.DRAINED:
                agent = self.members.get(AGENT)
                if agent is not None and agent.alive:
                    self.send(AGENT, op)
                else:
                    self.send(ident, [Op.DRAIN_DONE, op[1], []])
            elif code == Op.DRAIN_DONE:
                if op[1].encode() in self.members:
                    self.send(op[1].encode(), op)
            elif code == Op.ADOPT:
                self.adopt(op[1], op[2])
            elif code == Op.BYE:
                m.bye = True
            elif code == Op.LEASE:
                self.lease_op = op
                for w in self.members.values():
                    if w.alive and w.ident != AGENT:
                        self.send(w.ident, op)
            elif code in (Op.WILL, Op.WILL_FIRE):
                agent = self.members.get(AGENT)
                if agent is not None and agent.alive:
                    self.send(AGENT, op)
                elif code == Op.WILL_FIRE:
                    self.send(ident, [Op.WILL_GO, op[2]])  # no agent: the node decides alone
            elif code == Op.STATS:
                m.stats = op[1]
                self.broadcast_stats()
            elif code == Op.PING:
                self.send(ident, [Op.PONG, self.epoch, self.version])
            elif code == Op.SHARED_PUB:
                self.shared_publish(ident, op[1], op[2], op[3])
            elif code == Op.SYNC:
                self.flush_delta_only()
                self.syncs.append([ident, op[1], self.version, now + self.sync_timeout])
                self.check_syncs(now)
            elif code == Op.ROUTE_ACK:
                if op[1] > m.acked:
                    m.acked = op[1]
                if self.syncs:
                    self.check_syncs(now)

    def hello(self, ident: bytes, op: list, now: float) -> Member:
        _, wire, filters, client_ids, retained = op[:5]
        if wire != WIRE_VERSION:
            log.error("member speaks another wire version", extra=kv(member=ident.decode(), version=wire))
        old = self.members.get(ident)
        if old is not None:
            for flt in list(old.filters):
                self.route_del(old, flt)
            self._forget_pending(ident)  # the member restarted: what it had not confirmed it never will
        m = Member(ident, ident.decode(errors="replace"), last_seen=now)
        self.members[ident] = m
        for flt in filters:
            self.route_add(m, flt)
        for cid in client_ids:
            holder = self.members.get(self.registry.get(cid, ident))
            if holder is not None and holder.ident != ident and holder.alive:
                # granted to another worker while this one was down: its copy is stale
                self.send(ident, [Op.TAKEOVER, cid, 0, True])
            else:
                self.registry[cid] = ident
                if self.settings.clustered:
                    self.unverified.add(cid)  # from its store: etcd says whether it is still ours
        for msg in retained or ():
            self.retain(None, msg)
        routes = [[o.name, flt] for o in self.members.values() if o.ident != ident for flt in o.filters]
        # WELCOME carries the table as of the version after this member's own deltas
        self.flush_delta_only()
        # the member has the table at this version (the WELCOME below); not one more:
        # a SYNC must wait for it to apply the next ROUTES
        m.acked = self.version
        retained = [msg_to_wire(r, now) for r in self.retained.values() if not r.expired(now)]
        self.send(ident, [Op.WELCOME, self.epoch, self.version, routes, retained])
        if self.lease_op is not None and ident != AGENT:
            self.send(ident, self.lease_op)
        log.info("member joined", extra=kv(member=m.name, filters=len(filters), sessions=len(client_ids)))
        self.check_settled(now)
        for queue in self.claims.values():
            c = queue[0]
            if self.registry.get(c.client_id) == ident and c.claimant != ident and c.owning != 1:
                # the holder restarted while a hand-over was asked of it: ask again
                self.send(ident, [Op.TAKEOVER, c.client_id, c.req, c.clean_start])
        return m

    def flush_delta_only(self) -> None:
        """Turn the route changes so far into one versioned ROUTES op for every member."""
        if self.delta:
            self.version += 1
            ops = [Op.ROUTES, self.version, self.delta]
            self.delta = []
            for ident, m in self.members.items():
                if m.alive:
                    self.out.setdefault(ident, []).append(ops)

    def route_add(self, m: Member, flt: str, since: float | None = None) -> None:
        if flt in m.filters:
            return
        m.filters[flt] = True
        self.by_name[m.name] = m.ident
        self.trie.add(flt, m.ident, True)
        self.delta.append([1, m.name, flt, since])
        if since is not None and self.recent and not flt.startswith("$share/"):
            self.replay(m.ident, flt, since)

    def replay(self, ident: bytes, flt: str, since: float) -> None:
        """Publishes routed after the subscription was made but before its route
        arrived here go to the new subscriber's worker now."""
        early = since - REPLAY_MARGIN
        for at, sender, msg, targets in reversed(self.recent):
            if at < early:
                break
            if at < since and msg[2]:
                continue  # QoS 1/2 read before the SUBSCRIBE: maybe acknowledged before it arrived
            if sender != ident and ident not in targets and topic_matches(flt, msg[0]):
                targets.add(ident)
                self.send(ident, [Op.DELIVER, msg, True, [], None, flt, at] if ident == AGENT
                          else [Op.DELIVER, msg, True, [], None])

    def route_del(self, m: Member, flt: str) -> None:
        self.share_weight.pop((m.ident, flt), None)
        if m.filters.pop(flt, None) is None:
            return
        self.trie.remove(flt, m.ident)
        self.delta.append([-1, m.name, flt])

    def delivered(self, ident: bytes, ref: list) -> None:
        key = (ref[0], ref[1])
        waiting = self.pending.get(key)
        if waiting is None:
            return
        waiting.discard(ident)
        if not waiting:
            del self.pending[key]
            self.send(key[0], [Op.CONFIRM, key[1], True])

    def publish(self, sender: bytes, msg: list, token=None, at: float | None = None) -> None:
        topic = msg[0]
        trie = self.trie
        normal = {ident for ident, _ in trie.match(topic) if ident != sender}
        groups_for: dict[bytes, list] = {}
        for group in trie.match_shared(topic):
            members = list(group.members)
            if len(members) == 1 and members[0] == sender:
                continue  # only the sender has this group: it decided locally
            chosen = self._pick(group, members)
            groups_for.setdefault(chosen, []).append([group.group, group.topic_filter])
        self._dispatch(sender, msg, normal, groups_for, token, at)

    def remote_publish(self, sender: bytes, msg: list, normal: bool, groups: list, token, at) -> None:
        """A message another node sent (through the cluster agent, the sender): to
        this node's members only, so it is never forwarded to a third node."""
        topic = msg[0]
        trie = self.trie
        targets = {ident for ident, _ in trie.match(topic) if ident != sender} if normal else set()
        groups_for: dict[bytes, list] = {}
        if groups:
            wanted = {(g, f) for g, f in groups}
            for group in trie.match_shared(topic):
                if (group.group, group.topic_filter) in wanted:
                    members = [m for m in group.members if m != sender]
                    if members:
                        chosen = self._pick(group, members)
                        groups_for.setdefault(chosen, []).append([group.group, group.topic_filter])
        self._dispatch(sender, msg, targets, groups_for, token, at)

    def _dispatch(self, sender: bytes, msg: list, normal: set, groups_for: dict, token, at) -> None:
        targets = normal | groups_for.keys()
        ref = None
        if token is not None:
            if targets:
                ref = [sender, token]
                self.pending[(sender, token)] = set(targets)
            else:
                self.send(sender, [Op.CONFIRM, token, True])
        for ident in targets:
            self.send(ident, [Op.DELIVER, msg, ident in normal, groups_for.get(ident, []), ref])
            self.forwarded += 1
        if at is not None and not msg[3]:  # retained messages reach new subscribers as retained
            recent = self.recent
            recent.append((at, sender, msg, set(targets)))
            if len(recent) > 256 and recent[0][0] < at - REPLAY_WINDOW:
                while recent and recent[0][0] < at - REPLAY_WINDOW:
                    recent.popleft()

    def _pick(self, group, members: list, exclude: bytes | None = None) -> bytes:
        key = (group.group, group.topic_filter)
        cands = [m for m in members if m != exclude and self.members.get(m) is not None and self.members[m].alive] or members
        if self.share_weight:
            # the agent counts once per other node with the group: members spread evenly over nodes
            sw = self.share_weight
            flt = f"$share/{group.group}/{group.topic_filter}"
            cands = [m for m in cands for _ in range(sw.get((m, flt), 1))]
        i = self.shared_cursor.get(key, 0)
        self.shared_cursor[key] = i + 1
        return cands[i % len(cands)]

    def shared_publish(self, sender: bytes, msg: list, group_name: str, flt: str) -> None:
        for group in self.trie.match_shared(msg[0]):
            if group.group == group_name and group.topic_filter == flt:
                members = [m for m in group.members if m != sender]
                if members:
                    chosen = self._pick(group, members)
                    self.send(chosen, [Op.DELIVER, msg, False, [[group_name, flt]]])
                return

    def retain(self, sender: bytes | None, msg: list, token=None) -> None:
        """A retained message (or its removal); with a token, CONFIRM to the sender
        once it is in the router's store (the publisher's PUBACK waits for it)."""
        now = time.monotonic()
        m = msg_from_wire(msg, now)
        sys_topic = m.topic.startswith("$SYS/")  # workers' figures: outside the limit
        if m.payload:
            if m.topic not in self.retained:
                if sys_topic:
                    self.sys_retained += 1
                elif len(self.retained) - self.sys_retained >= self.settings.max_retained_messages:
                    log.warning("retained message limit reached", extra=kv(topic=m.topic, limit=self.settings.max_retained_messages))
                    if token is not None:
                        self.send(sender, [Op.CONFIRM, token, True])
                    return
            self.retained[m.topic] = m
        elif self.retained.pop(m.topic, None) is not None and sys_topic:
            self.sys_retained -= 1
        if self.store is not None:
            self.store.set_retained(m, now)
        # cluster: the PUBACK waits for the agent too (in etcd, and applied by every node)
        agent = self.members.get(AGENT) if token is not None and not sys_topic and sender != AGENT else None
        ref = [sender, token] if agent is not None and agent.alive else None
        if token is not None:
            if ref is not None:
                waiting = self.pending[(sender, token)] = {AGENT}
                if self.store is not None:
                    waiting.add(STORE)
                    self.store.after_commit(lambda ok: self._stored(sender, token, ok))
            elif self.store is not None:
                self.store.after_commit(lambda ok: self.send(sender, [Op.CONFIRM, token, ok]))
            else:
                self.send(sender, [Op.CONFIRM, token, True])
        if sender is not None:
            for ident, m in self.members.items():
                if ident != sender and m.alive:
                    self.send(ident, [Op.RETAINED, msg, ref] if ident == AGENT and ref is not None else [Op.RETAINED, msg])

    def _stored(self, sender: bytes, token, ok: bool) -> None:
        """The router's store has a retained message whose PUBACK also waits for the agent."""
        if ok:
            self.delivered(STORE, [sender, token])
        elif self.pending.pop((sender, token), None) is not None:
            self.send(sender, [Op.CONFIRM, token, False])

    # -- sessions ------------------------------------------------------------------
    def claim(self, ident: bytes, client_id: str, req: int, clean_start: bool, now: float) -> None:
        queue = self.claims.setdefault(client_id, [])
        queue.append(Claim(client_id, req, ident, clean_start, now + CLAIM_TIMEOUT, now))
        if len(queue) == 1:
            self._start_claim(queue[0])

    def _start_claim(self, c: Claim) -> None:
        owner = self.registry.get(c.client_id)
        if c.claimant == AGENT:
            self._agent_claim(c, owner)
            return
        if self._ask_agent(c, owner):
            return
        if owner is None or owner == c.claimant or owner not in self.members:
            self._grant(c, None)
            return
        if not self.members[owner].alive:
            self._holder_gone(c, self.members[owner])
            return
        self.send(owner, [Op.TAKEOVER, c.client_id, c.req, c.clean_start])

    def _holder_gone(self, c: Claim, holder: Member) -> None:
        """The worker holding the claimed client id is gone (killed, or silent)."""
        if c.claimant == AGENT:
            self._agent_handoff(None, c, None)  # its session stays in that worker's store, stale soon
            return
        if c.clean_start:
            # nothing of the old session is wanted: grant at once; the old holder
            # drops its copy when it is back (hello, _revive)
            holder.orphans.add(c.client_id)
            self._grant(c, None)
        else:
            # the session is in that worker's store: wait for circus to restart it
            # (hello asks it again)
            c.deadline = max(c.deadline, time.monotonic() + HOLDER_RESTART_WAIT)

    def _grant(self, c: Claim, state, flag: int = Own.KEEP) -> None:
        if flag == Own.REFUSED:
            self.send(c.claimant, [Op.GRANT, c.client_id, c.req, None, flag])
        else:
            self.registry[c.client_id] = c.claimant
            self.send(c.claimant, [Op.GRANT, c.client_id, c.req, state] + ([flag] if flag else []))
        queue = self.claims.get(c.client_id)
        if queue and queue[0] is c:
            queue.pop(0)
            if queue:
                self._start_claim(queue[0])
            else:
                del self.claims[c.client_id]

    def handoff(self, ident: bytes, client_id: str, req: int, state) -> None:
        queue = self.claims.get(client_id)
        if not queue or queue[0].req != req:
            return  # a late answer to a claim that timed out
        if queue[0].claimant == AGENT:
            self._agent_handoff(ident, queue[0], state)
            return
        claimant = self.members.get(queue[0].claimant)
        self.handover_seconds.observe(time.monotonic() - queue[0].since)
        if state is not None and claimant is not None:
            # the session's routes move with it, before its old holder withdraws them
            for sub in state[4]:
                self.route_add(claimant, sub[0])
        self._grant(queue[0], state)
        if state is not None:
            # every DELIVER queued for the old holder before this mark was routed
            # without the new holder: those (only) it forwards to the session
            self.send(ident, [Op.MOVED, client_id, [sub[0] for sub in state[4]]])

    # -- sessions across the cluster (issue 11; the agent's side: cluster/ownership.py) ----------
    def _ask_agent(self, c: Claim, holder: bytes | None) -> bool:
        """In a cluster, a claim of a client id this node does not hold (or holds only from
        its store) first makes this node its owner in etcd, through the agent."""
        if c.owning or c.claimant == AGENT or not self.settings.clustered:
            return False
        agent = self.members.get(AGENT)
        if agent is None or not agent.alive:
            if self.settings.cluster_lease_loss == "disconnect" and self.lease_op is not None:
                self._grant(c, None, Own.REFUSED)  # the node held a lease: nobody can own it for us now
                return True
            return False  # no agent (restarting): the node decides alone, as before issue 11
        if holder is not None and holder in self.members and c.client_id not in self.unverified:
            return False  # held here, owned by this node: a hand-over between workers
        c.owning = 1
        self.send(AGENT, [Op.OWN, c.client_id, c.req, c.clean_start])
        return True

    def owned(self, client_id: str, req: int, verdict: int, state) -> None:
        queue = self.claims.get(client_id)
        if not queue or queue[0].req != req or queue[0].owning != 1:
            return  # a claim that timed out meanwhile
        c = queue[0]
        c.owning = 2
        if verdict == Own.KEEP:
            self.unverified.discard(client_id)
            self._start_claim(c)
            return
        if verdict == Own.REFUSED:
            self._grant(c, None, Own.REFUSED)
            return
        self.unverified.discard(client_id)
        holder = self.registry.get(client_id)
        if holder is not None and holder != c.claimant and holder in self.members:
            self.send(holder, [Op.TAKEOVER, client_id, 0, STALE])  # its copy is stale: dropped
        if state is not None:
            claimant = self.members.get(c.claimant)
            if claimant is not None:
                for sub in state[4]:
                    self.route_add(claimant, sub[0])
        self._grant(c, state, Own.FRESH)

    def _agent_claim(self, c: Claim, holder: bytes | None) -> None:
        """The agent takes a session off this node (another node's CONNECT), in turn with
        this node's own claims of the id: the holder closes the connection (0x8E) and hands
        the session over; it leaves the node."""
        m = self.members.get(holder) if holder is not None else None
        if m is None or holder == AGENT or not m.alive:
            self._agent_handoff(None, c, None)
            return
        self.send(holder, [Op.TAKEOVER, c.client_id, c.req, c.clean_start])

    def _agent_handoff(self, ident: bytes | None, c: Claim, state) -> None:
        cid = c.client_id
        if ident is not None and self.registry.get(cid) == ident:
            del self.registry[cid]
        self.unverified.discard(cid)
        self.send(AGENT, [Op.GRANT, cid, c.req, state])
        queue = self.claims.get(cid)
        if queue and queue[0] is c:
            queue.pop(0)
            if queue:
                self._start_claim(queue[0])
            else:
                del self.claims[cid]

    def adopt(self, client_id: str, state) -> None:
        """A session from a node that left, now owned here: to the worker holding a copy
        (stale: replaced), else to the worker with the fewest sessions."""
        holder = self.registry.get(client_id)
        m = self.members.get(holder) if holder is not None else None
        if m is None or not m.alive or holder == AGENT:
            workers = [w for w in self.members.values() if w.alive and w.ident != AGENT and w.name.startswith("w")]
            if not workers:
                return
            counts: dict[bytes, int] = {}
            for ident in self.registry.values():
                counts[ident] = counts.get(ident, 0) + 1
            m = min(workers, key=lambda w: counts.get(w.ident, 0))
        self.registry[client_id] = m.ident
        self.unverified.discard(client_id)
        for sub in state[4]:
            self.route_add(m, sub[0])
        self.send(m.ident, [Op.ADOPT, client_id, state])

    def _disown(self, client_id: str) -> None:
        if self.settings.clustered and client_id not in self.claims:
            agent = self.members.get(AGENT)
            if agent is not None and agent.alive:
                self.send(AGENT, [Op.DISOWN, client_id])

    def check_syncs(self, now: float) -> None:
        """Answer the SYNCs whose route version every other live member has applied."""
        waiting = []
        for s in self.syncs:
            ident, token, version, deadline = s
            if now >= deadline or all(m.acked >= version for i, m in self.members.items() if i != ident and m.alive):
                self.send(ident, [Op.SYNCED, token])
            else:
                waiting.append(s)
        self.syncs = waiting

    def check_settled(self, now: float) -> None:
        """Route what waited for every worker of the node to register."""
        if self.settled:
            return
        workers = sum(1 for m in self.members.values() if m.alive and m.name.startswith("w"))
        if workers < self.settings.workers and now - self.started < SETTLE_TIMEOUT:
            return
        self.settled = True
        deferred, self.deferred = self.deferred, []
        log.info("route table complete", extra=kv(workers=workers, deferred=len(deferred)))
        for ident, op in deferred:
            m = self.members.get(ident)
            if m is not None and m.alive:
                self.handle(ident, pack([op]))

    def check_timeouts(self, now: float) -> None:
        self.check_settled(now)
        if self.syncs:
            self.check_syncs(now)
        if now >= self.retained_sweep:
            self.sweep_retained(now)
        if self.store is not None and self.store.failed:
            self.store.probe()  # after a failed write: writes again once there is room
        for queue in list(self.claims.values()):
            c = queue[0]
            if now >= c.deadline and c.claimant == AGENT:
                self._agent_handoff(None, c, None)
                continue
            if now >= c.deadline and c.owning == 1:
                log.warning("the agent did not answer a claim; refusing it", extra=kv(client=c.client_id))
                self._grant(c, None, Own.REFUSED)  # nobody knows who owns it: never two sessions
                continue
            if now >= c.deadline:
                log.warning("session hand-over timed out; granting an empty session",
                            extra=kv(client=c.client_id, claimant=c.claimant.decode()))
                holder = self.members.get(self.registry.get(c.client_id))
                if holder is not None and holder.ident != c.claimant:
                    holder.orphans.add(c.client_id)  # it drops its copy if it comes back
                self._grant(c, None)
        for ident, m in list(self.members.items()):
            if m.alive and now - m.last_seen > MEMBER_TIMEOUT:
                self._member_gone(ident)

    def sweep_retained(self, now: float) -> None:
        """Expired retained messages leave memory and the store (once a minute)."""
        self.retained_sweep = now + RETAINED_SWEEP
        for topic, m in list(self.retained.items()):
            if m.expired(now):
                del self.retained[topic]
                if self.store is not None:
                    self.store.delete_retained(topic)
        if self.store is not None:
            self.store.maybe_compact()

    def _member_gone(self, ident: bytes) -> None:
        m = self.members.get(ident)
        if m is None or not m.alive:
            return
        m.alive = False
        log.warning("member silent, dropping its routes", extra=kv(member=m.name))
        for queue in list(self.claims.values()):
            c = queue[0]
            if self.registry.get(c.client_id) == ident and c.claimant != ident:
                self._holder_gone(c, m)  # its TAKEOVER will not be answered
        self._forget_pending(ident)
        m.lost = list(m.filters)
        for flt in m.lost:
            self.route_del(m, flt)
        self.out.pop(ident, None)

    def _forget_pending(self, ident: bytes) -> None:
        for key, waiting in list(self.pending.items()):
            if key[0] == ident:
                del self.pending[key]
            elif ident in waiting:
                waiting.discard(ident)
                if not waiting:  # a receiver died before it owned the message
                    del self.pending[key]
                    self.send(key[0], [Op.CONFIRM, key[1], False])

    def _revive(self, m: Member) -> None:
        """A member taken for gone speaks again (it was only slow): its routes come
        back, it gets the whole table and retained set it missed (a new WELCOME),
        and it drops the sessions granted elsewhere meanwhile."""
        m.alive = True
        log.warning("member back", extra=kv(member=m.name, filters=len(m.lost), orphans=len(m.orphans)))
        for flt in m.lost:
            self.route_add(m, flt)
        m.lost = []
        self.flush_delta_only()
        m.acked = self.version
        now = time.monotonic()
        routes = [[o.name, flt] for o in self.members.values() if o.ident != m.ident for flt in o.filters]
        retained = [msg_to_wire(r, now) for r in self.retained.values() if not r.expired(now)]
        self.send(m.ident, [Op.WELCOME, self.epoch, self.version, routes, retained])
        for cid in m.orphans:
            if self.registry.get(cid) != m.ident:
                self.send(m.ident, [Op.TAKEOVER, cid, 0, True])
        m.orphans.clear()

    def broadcast_stats(self) -> None:
        per = {m.name: m.stats for m in self.members.values() if m.alive and m.stats}
        sums = node_sums(per.values())
        # subscriptions and retained counts are node-wide facts, not per-worker sums
        sums["retained"] = len(self.retained)
        for ident, m in self.members.items():
            if m.alive:
                self.send(ident, [Op.NODE_STATS, sums, per])


def main() -> None:
    die_with_parent()
    settings = Settings()
    logs.setup(settings.log_level, settings.log_format, node=settings.node, process="router")
    router = Router(settings)
    try:
        router.open_store()
    except StoreError as e:
        log.error("cannot start: %s", e)
        raise SystemExit(3) from None

    def stop(*_):
        if settings.clustered:
            # a cluster node drains first (issue 11): the workers hand their sessions to the
            # agent, through this router; it stops once every member said BYE, or in DRAIN_WAIT
            router.leaving = time.monotonic() + DRAIN_WAIT
        else:
            router.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload (circus.ini send_hup) has nothing to re-read here
    router.run()
    log.info("router stopped", extra=kv(forwarded=router.forwarded))
