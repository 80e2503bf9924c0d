"""The node's switchboard: a ZeroMQ ROUTER socket and the node's tables in Python.

Members (workers, the cluster agent) connect DEALER sockets with identity
``w<wid>`` (or ``agent``) and speak the node protocol (core/ops.py). `Router`
owns the socket, the loop and the dispatch of ops; what it keeps is in four
parts, a file each:
- membership (members.py): HELLO, beats, gone and back;
- the route table (routes.py): which member wants which filters, versioned;
  every change is broadcast as a delta; SYNCs wait for every member to apply it;
- forwarding (forward.py): a publish from one member goes once to each other
  member that wants it; confirms; the replay window for late routes;
- the session registry (sessions.py): which member holds which client id, and
  the hand-over of a session between members (and, clustered, through the agent);
- the node-wide retained messages (retained.py; every member keeps a copy).
The ops for one member are batched into one send per loop pass.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from common import logs
from common.logs import kv
from common.proc import die_with_parent, steady_gc
from common.settings import Settings
from core import ops as o
from core.ops import CONFIRM, CONFIRMS, DELIVERED, DELIVERED_MANY, PUB, BadOp, WireCheck, decode, pack, unpack
from core.sums import node_sums

from .admin import OpsService
from .forward import Forwarder
from .away import Away
from .frames import EVENTS, POLLIN, recv_pair, send_pair
from .members import AGENT, MEMBER_TIMEOUT, Member, Membership  # noqa: F401  (names importable from here)
from .peerdata import PeerData
from .retained import RetainedSet, StoreError
from .routes import RouteTable
from .sender import Sender
from .sessions import CLAIM_TIMEOUT, Claim, Sessions  # noqa: F401

log = logging.getLogger("shoal.router")

ROUTED = (o.Pub, o.SharedPub, o.Direct, o.RemotePub)  # ops that need the whole route table
READ_BATCH = 1000  # member messages read per loop pass at most
HOT = (PUB, DELIVERED, DELIVERED_MANY)  # ops a member sends per message: read as wire lists (handle)
DRAIN_WAIT = 8.0  # seconds a stopping cluster node's router waits for its members (circus waits 10)


class Router:
    def __init__(self, settings: Settings, clock=time.monotonic, sock=None):
        """clock: the host's monotonic clock (members send their times in it); sock: the
        ROUTER socket (tests pass a fake one: send_multipart, recv_multipart)."""
        self.settings = settings
        self.clock = clock
        self.epoch = int.from_bytes(os.urandom(4), "big")
        self.out: dict[bytes, list] = {}  # ident -> ops to send this loop pass
        self.wire = WireCheck(settings.node)  # members speaking another WIRE_VERSION (also the ops channel's)
        self.malformed = 0  # ops that were not ours (undecodable), dropped
        self.membership = Membership(self)
        self.members = self.membership.members
        self.routes = RouteTable(self)
        self.forward = Forwarder(self)
        self.away = Away(self)  # sessions handed to another node (issue 11 point 2)
        self.sessions = Sessions(self)
        self.retained = RetainedSet(self)
        self.leaving = 0.0  # cluster: SIGTERM received, stop at this time (or once every member said BYE)
        # when the socket was last read empty: a member is silent only if nothing of it was read
        # for MEMBER_TIMEOUT before then, never because this router had a backlog to read
        # (a SUBSCRIBE flood); None: read everything up to now (tests drive handle() directly)
        self.read_all_at: float | None = None
        self.lease_path = None  # router/ops.Ops once running; None (unit tests): LEASE on the data path
        if sock is None:
            sock = zmq.Context.instance().socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock = sock
        # SHOAL_CLUSTER_LINK=direct: other nodes' agents send their publishes here (router/peerdata.py)
        self.peer_data = PeerData(self) if settings.clustered and settings.cluster_link == "direct" else None
        # SHOAL_CLUSTER_ROUTER_SENDS: this router sends its members' publishes to other nodes itself
        self.sender = Sender(self) if self.peer_data is not None and settings.cluster_router_sends else None
        self.endpoint = settings.router_endpoint
        self.running = True
        # a SYNC (SUBACK) waits for every member; with a cluster agent that means every
        # live node, and a dead node's lease expires after SHOAL_CLUSTER_LEASE_TTL
        self.sync_timeout = settings.cluster_lease_ttl + 2.0 if settings.clustered else 1.0
        f, s = self.forward, self.sessions
        self.handlers = {  # op class -> fn(member, op, now)
            o.Pub: lambda mb, op, now: f.publish(mb.ident, op.msg, op.token, op.at),
            o.Delivered: lambda mb, op, now: f.delivered(mb.ident, op.ref),
            o.DeliveredMany: lambda mb, op, now: self._delivered_many(mb.ident, op.refs),
            o.RemotePub: lambda mb, op, now: f.remote_publish(mb.ident, op.msg, op.normal, op.groups, op.token, op.at,
                                                                 op.origin),
            o.Direct: lambda mb, op, now: f.direct(mb.ident, op),
            o.PubTo: lambda mb, op, now: f.publish_to(mb.ident, op.msg, op.member, op.filter, op.at),
            o.SharedPub: lambda mb, op, now: f.shared_publish(mb.ident, op.msg, op.group, op.filter),
            o.RouteAdd: self._route_add,
            o.RouteDel: lambda mb, op, now: self.routes.remove(mb, op.filter),
            o.Sync: lambda mb, op, now: self.routes.sync(mb.ident, op.token, now),
            o.RouteAck: lambda mb, op, now: self.routes.acked(mb, op.version, now),
            o.Retain: lambda mb, op, now: self.retained.retain(mb.ident, op.msg, op.token),
            o.Claim: lambda mb, op, now: s.claim(mb.ident, op.client_id, op.req, op.clean_start, now),
            o.Handoff: lambda mb, op, now: s.handoff(mb.ident, op.client_id, op.req, op.state),
            o.Release: lambda mb, op, now: s.released(mb.ident, op.client_id),
            o.Owned: lambda mb, op, now: s.owned(op.client_id, op.req, op.verdict, op.state),
            o.Adopt: lambda mb, op, now: s.adopt(op.client_id, op.state),
            o.NotOurs: lambda mb, op, now: s.not_ours(op.client_id),
            o.Drained: self._drained,
            o.DrainDone: self._drain_done,
            o.Will: self._will,
            o.WillFire: self._will,
            o.Lease: self._lease,
            o.Bye: self._bye,
            o.Stats: self._stats,
            o.Ping: lambda mb, op, now: self.send(mb.ident, o.Pong(self.epoch, self.routes.version)),
        }
        if self.sender is not None:  # (the agent's news of the other nodes, router/sender.py)
            for cls in (o.PeerInfo, o.PeerRoute, o.Peers):
                self.handlers[cls] = lambda mb, op, now: self.sender.on_op(op, now)

    # -- plumbing ---------------------------------------------------------
    @property
    def settled(self) -> bool:
        return self.membership.settled

    def open_store(self) -> None:
        """The node-wide retained messages live in DATA_DIR/router."""
        self.retained.open_store()

    def bind(self) -> None:
        path = self.endpoint.removeprefix("ipc://")
        if self.endpoint.startswith("ipc://") and os.path.exists(path):
            os.unlink(path)  # a previous router's socket file (it died)
        self.sock.bind(self.endpoint)
        log.info("router serving", extra=kv(endpoint=self.endpoint, epoch=self.epoch, pid=os.getpid()))

    def send(self, ident: bytes, op) -> None:
        """op: a typed op, or its wire list (the hot path's DELIVERs and CONFIRMs)."""
        self.out.setdefault(ident, []).append(op)

    def confirm(self, ident: bytes, token, ok: bool) -> None:
        """CONFIRM token to ident. Consecutive confirms to a worker, or to a peer router whose
        data link said it reads them (core/peerdata.py CONFIRMS_MARK), are one CONFIRMS op: in
        the order they were made, and nothing else sent to ident between two of them moves."""
        out = self.out.get(ident)
        if out is None:
            out = self.out[ident] = []
        elif out:
            last = out[-1]
            if last.__class__ is list and last[0] == CONFIRMS and last[1] == ok:
                last[2].append(token)
                return
        if ident[:1] == b"w" or (self.peer_data is not None and self.peer_data.reads_confirms(ident)):
            out.append([CONFIRMS, ok, [token]])
        else:  # (the agent, an older peer router: one CONFIRM each, as before)
            out.append([CONFIRM, token, ok])

    def _delivered_many(self, ident: bytes, refs: list) -> None:
        delivered = self.forward.delivered
        for ref in refs:
            delivered(ident, ref)

    def flush(self) -> bool:
        """Send the batched ops; True when everything went out."""
        self.routes.flush_delta()
        done = True
        peer_data = self.peer_data
        sock = self.sock
        for ident in list(self.out):
            ops = self.out[ident]
            if peer_data is not None and peer_data.is_peer(ident):
                peer_data.send(ident, ops, pack)  # (CONFIRMs to another node's agent)
                del self.out[ident]
                continue
            try:
                send_pair(sock, ident, pack(ops))
            except zmq.Again:
                done = False  # that member is slow: keep its ops, stop reading (push back)
                continue
            except zmq.ZMQError as e:
                if e.errno == zmq.EHOSTUNREACH:
                    self.membership.gone(ident)  # (drops its ops itself)
                else:
                    raise
            self.out.pop(ident, None)
        return done

    def run(self) -> None:
        self.bind()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        peer_sock = None
        if self.peer_data is not None:
            self.peer_data.bind()
            peer_sock = self.peer_data.sock
            poller.register(peer_sock, zmq.POLLIN)
        sender = self.sender
        if sender is not None:
            sender.attach(poller)
        ops = OpsService(self, poller)  # /metrics, /health, /ready, the admin API (router/admin.py)
        self.lease_path = ops.ops  # the workers' LEASE goes on the ops channel (router/ops.py)
        next_check = self.clock() + 0.5
        sock = self.sock
        watching = None  # what the poller watches: backlog (POLLOUT) or not (POLLIN); changed only when it changes
        while self.running:
            backlog = bool(self.out)
            # a peer's queue full (router/sender.py): the members are not read (push back)
            paused = sender is not None and sender.paused and sender.blocked()
            # (a slow member: push back on peers too; not settled: what they send waits in order)
            state = (backlog, self.membership.settled, paused)
            if state != watching:
                watching = state
                poller.modify(sock, zmq.POLLOUT if backlog else 0 if paused else zmq.POLLIN)
                if peer_sock is not None:
                    poller.modify(peer_sock, 0 if backlog or not state[1] else zmq.POLLIN)
            events = dict(poller.poll(100 if sender is None else sender.timeout_ms()))
            if sender is not None:
                sender.poll(events, self.clock())
            if not backlog and not paused and sock in events:
                if self.read_members():
                    self.read_all_at = self.clock()
            if peer_sock is not None and not backlog and peer_sock in events:
                self.peer_data.read(self.clock())
            now = self.clock()
            if not backlog and not paused and sock not in events:
                self.read_all_at = now  # (paused: what waits unread may be a member's beat)  # (the socket had nothing to read: nothing is left unread)
            if self.leaving and (now >= self.leaving or self.membership.all_done()):
                self.running = False
            ops.poll(events, now)
            if now >= next_check:
                next_check = now + 0.5
                self.check_timeouts(now)
            self.retained.flush()
            if sender is not None:
                sender.tick(now)
                sender.flush(now)
            self.flush()
        ops.close()
        if sender is not None:
            sender.close()
        self.retained.close()
        if self.peer_data is not None:
            self.peer_data.close()
        self.sock.close(0)

    def read_members(self, most: int = READ_BATCH) -> bool:
        """Read at most `most` messages of the members' socket, which poll found readable; True
        when it is empty now. The first message is there (poll said so); after each, ZMQ_EVENTS
        says whether another is. (Reading until zmq.Again cost more: pyzmq builds that exception
        at about three times the cost of the check, once per loop pass.)"""
        sock = self.sock
        recv, getsockopt = sock.recv, sock.getsockopt
        for _ in range(most):
            try:
                ident, data = recv_pair(recv, getsockopt)
            except zmq.Again:
                return True
            except ValueError:  # not two frames: not one of ours
                self.malformed += 1
            else:
                self.handle(ident, data)
            if not sock.get(EVENTS) & POLLIN:
                return True
        return False

    # -- ops ------------------------------------------------------------------
    def handle(self, ident: bytes, data: bytes) -> None:
        """One message of a member: its ops in order. An op that is not ours is dropped,
        counted and logged; an error handling one never takes the router down."""
        try:
            wires = unpack(data)
        except Exception:
            wires = None
        if not isinstance(wires, list):
            self.malformed += 1
            log.warning("undecodable message from a member", extra=kv(member=ident.decode(errors="replace")))
            return
        now = self.clock()
        m = None  # the member, looked up at its first hot op (and again after any other op)
        hot = False
        f = self.forward
        for w in wires:
            code = w[0] if w.__class__ is list and w else None
            if code in HOT and len(w) > 1:
                # PUB and DELIVERED(_MANY) as wire lists: no op object, no handler lookup, per
                # message; only for a live member of a settled node (else as any op, below)
                if m is None:
                    m = self.members.get(ident)
                    hot = m is not None and m.alive and self.membership.settled
                if hot:
                    m.last_seen = now
                    try:
                        if code == PUB:
                            n = len(w)
                            f.publish(ident, w[1], w[2] if n > 2 else None, w[3] if n > 3 else None)
                        elif code == DELIVERED:
                            f.delivered(ident, w[1])
                        else:
                            self._delivered_many(ident, w[1])
                    except Exception:
                        self.malformed += 1
                        log.exception("error handling a member's op",
                                      extra=kv(member=ident.decode(errors="replace"), op=o.Op(code).name))
                    continue
            m = None
            try:
                op = decode(w)
            except BadOp as e:
                self.malformed += 1
                log.warning("undecodable op from a member", extra=kv(member=ident.decode(errors="replace"),
                                                                     error=str(e)[:200]))
                continue
            try:
                self.handle_op(ident, op, now)
            except Exception:
                self.malformed += 1
                log.exception("error handling a member's op",
                              extra=kv(member=ident.decode(errors="replace"), op=op.CODE.name))

    def handle_op(self, ident: bytes, op, now: float) -> None:
        cls = op.__class__
        if cls is o.Hello:
            self.membership.hello(ident, op, now)
            return
        m = self.members.get(ident)
        if m is None:
            # a member we do not know (the router restarted): ask it to say hello
            self.send(ident, o.Pong(self.epoch, self.routes.version))
            return
        m.last_seen = now
        if not m.alive:
            self.membership.revive(m)
        if not self.membership.settled and cls in ROUTED:
            # a route table without the workers that have not registered yet would
            # drop (and confirm) messages they want: wait for them
            self.membership.deferred.append((ident, op))
            return
        fn = self.handlers.get(cls)
        if fn is not None:
            fn(m, op, now)

    def data_addr(self, ident: bytes) -> str | None:
        """For the agent's WELCOME: where this router takes other nodes' publishes (direct link)."""
        if ident == AGENT and self.peer_data is not None:
            return self.peer_data.address
        return None

    def _agent(self) -> Member | None:
        return self.membership.alive(AGENT)

    def _drained(self, m: Member, op: o.Drained, now: float) -> None:
        if self._agent() is not None:
            self.send(AGENT, op)
        else:
            self.send(m.ident, o.DrainDone(op.member, []))

    def _drain_done(self, m: Member, op: o.DrainDone, now: float) -> None:
        target = str(op.member).encode()
        if target in self.members:
            self.send(target, op)

    def _will(self, m: Member, op, now: float) -> None:
        if self._agent() is not None:
            self.send(AGENT, op)
        elif op.__class__ is o.WillFire:
            self.send(m.ident, o.WillGo(op.msg))  # no agent: the node decides alone

    def _lease(self, m: Member, op: o.Lease, now: float) -> None:
        s = self.sessions
        prev = s.lease_op
        replaced = prev is not None and op.lease and prev.lease and op.lease != prev.lease
        if prev is not None and (replaced or op.until is None or prev.until is None or prev.until <= now):
            # issue 11: the lease lapsed (lost, ran out before this news came, or replaced:
            # a restarted agent found it expired): any id held here may have been owned
            # elsewhere meanwhile, so etcd decides at the next claim of each (a fenced copy
            # resumed after a partition healed; a chaos run's twin after an agent SIGKILL)
            s.unverified.update(s.registry)
        s.lease_op = op
        if self.lease_path is not None:
            self.lease_path.push_lease(op)
            return
        for w in self.members.values():
            if w.alive and w.ident != AGENT:
                self.send(w.ident, op)

    def _route_add(self, m: Member, op: o.RouteAdd, now: float) -> None:
        if op.weight is not None:  # the agent: a shared group held on op.weight other nodes
            self.forward.share_weight[(m.ident, op.filter)] = op.weight
        self.routes.add(m, op.filter, op.since)

    def _bye(self, m: Member, op: o.Bye, now: float) -> None:
        m.bye = True

    def _stats(self, m: Member, op: o.Stats, now: float) -> None:
        m.stats = op.snapshot
        self.broadcast_stats()

    def check_timeouts(self, now: float) -> None:
        self.membership.check_settled(now)
        if self.routes.syncs:
            self.routes.check_syncs(now)
        self.retained.check(now)
        self.sessions.check(now)
        if self.away.sessions:
            self.away.check(now)
        self.membership.check(now)

    def broadcast_stats(self) -> None:
        per = {m.name: m.stats for m in self.members.values() if m.alive and m.stats}
        sums = node_sums(per.values())
        # subscriptions and retained counts are node-wide facts, not per-worker sums
        sums["retained"] = len(self.retained.messages)
        op = o.NodeStats(sums, per)
        for ident, m in self.members.items():
            if m.alive:
                self.send(ident, op)


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
            router.leaving = router.clock() + DRAIN_WAIT
        else:
            router.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload (circus.ini send_hup) has nothing to re-read here
    steady_gc()
    router.run()
    log.info("router stopped", extra=kv(forwarded=router.forward.forwarded))
