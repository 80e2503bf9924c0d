"""The worker's side of the node router: a DEALER socket on the event loop.

Implements the bridge interface of bridge.py. Ops are queued and sent in one
batch per loop pass; when the router cannot take more, the worker stops
reading from its clients until the batch is out (push back, never drop).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

import zmq

from common.logs import kv
from common.settings import Settings
from core import ops as o
from core.ops import (CONFIRM, CONFIRMS, DELIVER, DELIVERED_MANY, PUB, STALE, WIRE_VERSION, BadOp, Own, decode, pack,
                      unpack)
from mqtt import SubscriptionTrie, parse_shared, topic_matches

from .flow import Pause
from .message import Message
from .metrics import node_sums
from core.records import (message_from, message_record, msg_from_wire, msg_to_wire, session_from_wire, session_to_wire,
                          will_message_record)
from .sys_topics import render
from .timers import Clock

log = logging.getLogger("shoal.link")

REPLAY_WINDOW = 0.5  # seconds of unrouted publishes kept for subscriptions whose route is late
# A QoS 0 publish another worker read up to REPLAY_MARGIN before a SUBSCRIBE counts as concurrent
# with it (two clients' packets on two workers have no order, and no acknowledgement said otherwise).
# A QoS 1/2 publish read before the SUBSCRIBE may have been acknowledged before it arrived: never
# replayed (issue 8: what a publisher saw acknowledged before the SUBSCRIBE is not for it).
# 50 ms, not less: the read times are those of two processes, and on a busy host a worker may read
# a SUBSCRIBE sent before a PUBLISH tens of milliseconds after the other worker read the PUBLISH.
REPLAY_MARGIN = 0.05

READ_BATCH = 200  # router messages read per loop pass at most
# seconds over which a worker counts the messages it queues for its router (SHOAL_ROUTER_BATCH_RATE):
# long enough that publishers sending together (a burst of 10 at 1,000 msg/s) do not count as a rate
RATE_WINDOW = 0.01
# pyzmq's flags as plain ints: `getsockopt(zmq.EVENTS) & zmq.POLLIN` builds an enum.Flag on every
# call (10 µs against 4 with ints, measured on the shared VM), once per message read and per send
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

CLAIM_TIMEOUT = 10.0  # the router answers within its own 5 s hand-over timeout


class RouterBridge:
    remote = True

    def __init__(self, settings: Settings, worker_id: int, clock=time.monotonic, sock=None):
        """clock: the host's monotonic clock (publication and subscription times are compared
        across workers); sock: a DEALER socket (tests pass a fake one)."""
        self.settings = settings
        self.name = f"w{worker_id}"
        self.clock = clock
        # (the hot path reads the host's clock itself, not through timers.Clock's __call__)
        self._time = clock.time if clock.__class__ is Clock else clock
        if sock is None:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.name.encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock = sock
        self.routes = SubscriptionTrie()  # other members' filters, keyed by member name
        self.remote_groups: dict[tuple, int] = {}  # (group, filter) -> members elsewhere
        self.route_version = -1
        self.epoch = None
        self.out: list = []
        self._flush_handle = None
        self._delayed = False
        self.batch_delay = settings.router_batch_ms / 1000.0
        # messages within RATE_WINDOW above which they wait for company (SHOAL_ROUTER_BATCH_RATE)
        self.batch_min = settings.router_batch_rate * RATE_WINDOW
        self.blocked = False
        self.figures = [0, 0, 0, 0]  # sends, pauses, publishes forwarded, deliveries received (ops_link.LINK_FIGURES)
        self.claims: dict[int, tuple] = {}
        self._req = itertools.count(1)
        self.node_stats: dict | None = None
        self.recent: deque = deque()  # (at, msg) publishes no other worker wanted, for _replay
        self.member_stats: dict = {}  # member name -> its last snapshot (NODE_STATS)
        self.syncs: dict[int, object] = {}
        self.confirms: dict[int, object] = {}
        self.unconfirmed: dict[int, tuple] = {}  # token -> (Pub | Retain, msg): sent again to a new router
        self._token = itertools.count(1)
        self.broker = None
        self.loop = None
        self._timer = None
        self.handlers = {
            o.Deliver: self._deliver, o.DeliverDirect: self._deliver_direct, o.Moved: self._moved,
            o.Confirm: self._confirm, o.Confirms: lambda op: self._confirms(op.ok, op.tokens), o.Routes: self._routes, o.Synced: self._synced, o.Grant: self._grant,
            o.Takeover: self._takeover, o.Retained: self._retained, o.Lease: self._lease,
            o.WillGo: self._will_go, o.Adopt: self._adopt, o.DrainDone: self._drain_done,
            o.Welcome: self._welcome, o.Pong: self._pong, o.NodeStats: self._node_stats,
        }

    # -- lifecycle ---------------------------------------------------------------
    def start(self, broker) -> None:
        self.broker = broker
        if self.settings.clustered and self.settings.cluster_lease_loss == "disconnect":
            from .lease import LeaseGuard

            self.guard = LeaseGuard(broker)  # issue 11: serve only while the node holds its lease

    guard = None

    def refuses_connect(self) -> bool:
        return self.guard is not None and self.guard.fenced

    def connect(self, loop=None) -> None:
        """Called on the running loop (WorkerServer.start); tests pass a loop of their own."""
        self.loop = loop or asyncio.get_running_loop()
        self.sock.connect(self.settings.router_endpoint)
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._readable)
        self.hello()
        self._timer = self.loop.call_later(1.0, self._ping)

    async def drain(self, timeout: float) -> int:
        """Cluster, SIGTERM: hand this worker's offline persistent sessions to other nodes
        (through the agent); returns how many went. The others stay in the store."""
        b = self.broker
        held = {cid: s for cid, s in b.sessions.items() if s.conn is None and s.expiry_interval}
        self._drain = self.loop.create_future()
        self.queue(o.Drained(self.name, [session_to_wire(s, b.now) for s in held.values()]))
        try:
            adopted = await asyncio.wait_for(self._drain, timeout)
        except asyncio.TimeoutError:
            adopted = []
        for cid in adopted:
            s = held.get(cid)
            if s is not None and b.sessions.get(cid) is s:
                b.gone_elsewhere(s)
        return len(adopted)

    _drain = None

    def close(self) -> None:
        self.out.append(o.Bye())
        if self.loop is not None:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        if self._timer is not None:
            self._timer.cancel()
        self._flush(final=True)
        self.sock.close(0)

    def hello(self) -> None:
        b = self.broker
        now = b.now
        filters = list(b._filter_refs)
        retained = [msg_to_wire(m, now) for _, m in b.retained.items()]
        self.out.insert(0, o.Hello(WIRE_VERSION, filters, list(b.sessions), retained))
        for req, (conn, connect) in self.claims.items():  # re-ask what the old router never answered
            self.out.append(o.Claim(connect.client_id, req, connect.clean_start))
        for token in self.syncs:
            self.out.append(o.Sync(token))
        # what a dead router never confirmed goes again (a receiver may see a QoS 1
        # message twice; nothing acknowledged to a publisher is lost)
        for token, (kind, msg) in self.unconfirmed.items():
            self.out.append(kind(msg_to_wire(msg, now), token))
        self._schedule()

    def _ping(self) -> None:
        self.queue(o.Ping())
        self._timer = self.loop.call_later(1.0, self._ping)

    # -- sending -----------------------------------------------------------------
    def queue(self, op) -> None:
        """Control ops leave at the end of this loop pass."""
        self.out.append(op)
        self._schedule()

    def queue_data(self, op) -> None:
        """While this worker queues messages for its router at more than SHOAL_ROUTER_BATCH_RATE
        a second (counted over the last RATE_WINDOW), a message that follows a send closer than
        SHOAL_ROUTER_BATCH_MS waits that long for company, so that under load one send carries
        many; otherwise (below that rate, or after a quiet spell) it leaves at the end of this
        loop pass. (Before, the rate did not count: at 1,000 msg/s from publishers that send
        together, most messages followed a send closely and waited, on both worker hops of a
        QoS 1 message, most of what crossing nodes added then. Waiting whenever the rate was
        high, also after a quiet spell, was tried: at 3,000 to 5,000 msg/s across it lengthened
        every round trip (lower throughput with one message in flight per publisher, p50 up by
        a third). Waiting only the rest of the interval was tried before: uvloop's timers count
        whole milliseconds (a 0.3 ms wait fires at once).)"""
        self.out.append(op)
        if self._flush_handle is None and self.loop is not None:
            if (self.batch_delay > 0 and self._busy() and self.loop.time() - self._sent_at < self.batch_delay):
                self._flush_handle = self.loop.call_later(self.batch_delay, self._flush)
                self._delayed = True
            else:
                self._flush_handle = self.loop.call_soon(self._flush)
        elif self.batch_delay > 0:
            self._busy()  # (counted)

    _sent_at = float("-inf")  # loop time of the last send to the router

    _win_start = 0.0  # the rate count's window: [start, start + RATE_WINDOW) of self.clock
    _win_n = 0  # messages queued in it
    _win_prev = 0  # ... and in the window before it

    def _busy(self) -> bool:
        """This message counted, were more than batch_min queued over the last RATE_WINDOW?
        (A sliding window from two fixed ones: the previous one weighed by how much of it is
        still within the last RATE_WINDOW.)"""
        now = self._time()
        d = RATE_WINDOW
        start = self._win_start
        if now - start >= d:
            k = (now - start) // d
            self._win_prev = self._win_n if k == 1 else 0
            self._win_n = 0
            start = self._win_start = start + k * d
        self._win_n += 1
        return self._win_n + self._win_prev * (1.0 - (now - start) / d) > self.batch_min

    def _schedule(self) -> None:
        if self.loop is None:
            return
        if self._flush_handle is not None:
            if not self._delayed:
                return
            self._flush_handle.cancel()  # a control op does not wait for the batch
        self._delayed = False
        self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self, final: bool = False) -> None:
        self._flush_handle = None
        self._delayed = False
        if not self.out:
            return
        ops, self.out = self.out, []
        try:
            self.sock.send(pack(ops), NOBLOCK)
        except zmq.Again:
            self.out = ops + self.out
            if not final:
                self._set_blocked(True)
                self._flush_handle = self.loop.call_later(0.005, self._flush)
            return
        self.figures[0] += 1
        self._sent_at = self.loop.time() if self.loop is not None else 0.0
        if self.blocked:
            self._set_blocked(False)
        self._readable()  # the zmq fd is edge-triggered: look for input after a send

    def _set_blocked(self, on: bool) -> None:
        """Push back on publishers while the router cannot take more."""
        self.blocked = on
        if on:
            self.figures[1] += 1
        for conn in list(self.broker.connections):
            if on:
                conn.flow.pause(Pause.ROUTER)
            else:
                conn.flow.resume(Pause.ROUTER)  # read again unless the client is paused for a reason of its own
        log.warning("router backlog: pausing clients" if on else "router backlog cleared")

    # -- the bridge interface -------------------------------------------------------
    def wants(self, topic: str) -> bool:
        routes = self.routes
        if not len(routes):
            return False
        return bool(routes.match(topic)) or bool(routes.match_shared(topic))

    def remote_group(self, group: str, flt: str) -> bool:
        return (group, flt) in self.remote_groups

    def forward(self, msg, on_owned=None) -> None:
        """Send msg to the members that want it; on_owned(ok) once they all own it."""
        token = None
        if on_owned is not None:
            token = next(self._token)
            self.confirms[token] = on_owned
            self.unconfirmed[token] = (o.Pub, msg)
        self.figures[2] += 1
        # (PUB's wire list, o.Pub(msg, token, at).to_wire(): no op object per message)
        self.queue_data([PUB, message_record(msg, self.broker.now), token, self._time()])  # (= msg_to_wire)

    def unrouted(self, msg) -> None:
        """A publish no other worker wanted: kept for REPLAY_WINDOW in case a
        subscription made elsewhere before it has a route that is still on its way."""
        now = self.clock()
        recent = self.recent
        recent.append((now, msg))
        if len(recent) > 256 and recent[0][0] < now - REPLAY_WINDOW:
            while recent and recent[0][0] < now - REPLAY_WINDOW:
                recent.popleft()

    def _replay(self, member: str, flt: str, since: float, sent: set) -> None:
        early = since - REPLAY_MARGIN
        for at, msg in reversed(self.recent):
            if at < early:
                break
            if at < since and msg.qos:
                continue
            key = (id(msg), member)
            if key not in sent and topic_matches(flt, msg.topic):
                sent.add(key)
                # (the filter and the read time: the cluster agent replays to the nodes whose route is new)
                self.queue_data(o.PubTo(msg_to_wire(msg, self.broker.now), member, flt, at))

    def forward_shared(self, msg, group: str, flt: str) -> None:
        self.queue(o.SharedPub(msg_to_wire(msg, self.broker.now), group, flt))

    def direct(self, msg, client_id: str, qos: int, retain: bool, sub_ids: tuple, ref: list | None = None) -> None:
        self.queue(o.Direct(msg_to_wire(msg, self.broker.now), client_id, qos, retain, list(sub_ids), ref))

    def filter_added(self, flt: str) -> None:
        # the moment the SUBSCRIBE is handled: publishes read after it are replayed to us
        # (QoS 0 also REPLAY_MARGIN before it); the host's monotonic clock orders two workers' reads
        self.queue(o.RouteAdd(flt, self.clock()))

    def filter_removed(self, flt: str) -> None:
        self.queue(o.RouteDel(flt))

    def retained_changed(self, msg, on_owned=None) -> None:
        """on_owned(ok) once the router has the message in its store (the node-wide retained)."""
        token = None
        if on_owned is not None:
            token = next(self._token)
            self.confirms[token] = on_owned
            self.unconfirmed[token] = (o.Retain, msg)
        self.queue(o.Retain(msg_to_wire(msg, self.broker.now), token))

    def claim(self, conn, connect) -> None:
        req = next(self._req)
        self.claims[req] = (conn, connect)
        # (a claim, a session's end and a cleared will go as messages do: at once after a quiet
        # spell, together close behind a send; a connect storm's took a message each)
        self.queue_data(o.Claim(connect.client_id, req, connect.clean_start))
        self.loop.call_later(CLAIM_TIMEOUT, self._claim_timeout, req)

    def _claim_timeout(self, req: int) -> None:
        pending = self.claims.pop(req, None)
        if pending is not None:
            conn, connect = pending
            log.warning("router did not answer a session claim; serving it locally", extra=kv(client=connect.client_id))
            self.broker.claimed(conn, connect, None)

    def sync(self, fn) -> None:
        """Call fn() once every other member has applied the routes sent so far."""
        token = next(self._token)
        self.syncs[token] = fn
        self.queue(o.Sync(token))

    def session_released(self, client_id: str) -> None:
        self.queue_data(o.Release(client_id))  # (as a claim: see claim())

    # cluster (issue 11): wills live in etcd (wills/<client id>) and fire exactly once
    @property
    def cluster_wills(self) -> bool:
        return self.settings.clustered

    def will_set(self, client_id: str, will) -> None:
        if not self.settings.clustered:
            return
        if will is None:
            self.queue_data(o.Will(client_id, None, 0))
        else:
            self.queue(o.Will(client_id, will_message_record(will.message), will.delay))

    def will_fire(self, client_id: str, msg) -> None:
        self.queue(o.WillFire(client_id, msg_to_wire(msg, self.broker.now)))

    def session_registered(self, client_id: str) -> None:
        """The router recorded us when it granted the claim. If granting it ended
        an older session of the same id on this worker (Broker.claimed), that
        queued a RELEASE which would now erase our new registration: drop it.
        (It is still queued: the grant is handled in one call, flushes come later.)"""
        out = self.out
        for i in range(len(out) - 1, -1, -1):
            op = out[i]
            if op.__class__ is o.Release and op.client_id == client_id:
                del out[i]

    def send_stats(self, snap: dict) -> None:
        self.queue(o.Stats(snap))
        self._publish_member_figures()

    def _publish_member_figures(self) -> None:
        """Every worker's figures are visible on every worker: this worker publishes
        its own (sys_topics), and the other workers' from the router's last NODE_STATS."""
        b = self.broker
        for name, snap in self.member_stats.items():
            if name == self.name or not name.startswith("w"):
                continue
            for topic, payload in render(f"$SYS/broker/workers/{name[1:]}", snap):
                b.publish(Message(topic, payload, 0, True, {}, None, ""), local_only=True)

    def node_snapshot(self) -> dict | None:
        """Node-wide figures: this worker's own (fresh) plus the others' from the
        router's last NODE_STATS, so that they are exactly the sum of the
        per-worker figures this worker publishes in the same round."""
        if not self.member_stats:
            return self.node_stats
        snaps = [self.broker.sys_snapshot()]
        snaps += [snap for name, snap in self.member_stats.items() if name != self.name and name.startswith("w")]
        sums = node_sums(snaps)
        if self.node_stats and "retained" in self.node_stats:
            sums["retained"] = self.node_stats["retained"]  # one node-wide set, not a sum
        return sums

    # -- receiving --------------------------------------------------------------------
    def _readable(self) -> None:
        sock = self.sock
        self.broker.now = self.broker.clock()  # what the router sends is handled at the time it arrives
        n = 0
        # the ROUTES of one read batch get one ROUTE_ACK and one $SYS routes/version (a flood
        # of subscriptions brings hundreds per pass: a retained $SYS publish each cost the
        # worker a sixth of its time)
        self._batch_routes = True
        try:
            self._read_batch(sock, n)
        finally:
            self._batch_routes = False
            if self._routes_due:
                self._routes_due = False
                self._routes_applied()

    _batch_routes = False
    _routes_due = False

    def _read_batch(self, sock, n: int) -> None:
        while sock.get(EVENTS) & POLLIN:
            if n >= READ_BATCH:
                # let the loop breathe (clients, the PING timer: a worker busy with a flood of
                # route changes for seconds was taken for dead by its router); back next pass
                self.loop.call_soon(self._readable)
                break
            n += 1
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            try:
                wires = unpack(data)
                if wires.__class__ is not list:
                    raise BadOp(f"a message is a list of ops, not {type(wires).__name__}")
            except Exception:
                log.exception("undecodable message from the router")
                continue
            for w in wires:
                # DELIVER and CONFIRMS (CONFIRM) as wire lists: no op object, no handler lookup per
                # message; any other op typed (decode) and dispatched by its class
                code = w[0] if w.__class__ is list and w else None
                try:
                    if code == DELIVER and len(w) == 5:
                        self._deliver_w(w[1], w[2], w[3], w[4])
                    elif code == CONFIRMS and len(w) == 3 and w[2].__class__ is list:
                        self._confirms(w[1], w[2])
                    elif code == CONFIRM and len(w) == 3:
                        self._confirms(w[2], (w[1],))
                    else:
                        try:
                            op = decode(w)
                        except BadOp as e:
                            self._bad_op(e, w)
                            continue
                        self.handle(op)
                except Exception:
                    log.exception("error handling a router message",
                                  extra=kv(op=o.BY_CODE[code].CODE.name if type(code) is int and code in o.BY_CODE
                                           else repr(code)[:20]))

    def _bad_op(self, err, w) -> None:
        log.warning("undecodable op from the router", extra=kv(error=str(err)[:200]))

    def handle(self, op) -> None:
        fn = self.handlers.get(op.__class__)
        if fn is not None:
            fn(op)

    def _deliver(self, op: o.Deliver) -> None:
        self._deliver_w(op.msg, op.normal, op.groups, op.ref)

    def _deliver_w(self, msg: list, normal: bool, groups: list, ref: list | None) -> None:
        self.figures[3] += 1
        b = self.broker
        b.route_remote(message_from(msg, b.now), normal, groups, ref)  # (= msg_from_wire)
        if ref is not None:
            store = b.store
            if store is not None and store.batch is not None:
                store.after_commit(lambda ok, ref=ref: self._delivered(ref))
            else:
                self._delivered(ref)

    def _delivered(self, ref: list) -> None:
        """DELIVERED ref: consecutive ones go as one DELIVERED_MANY op (issue 10, hotpath), in
        order, each counted for the batch rate as a message of its own."""
        out = self.out
        if out:
            last = out[-1]
            if last.__class__ is list and last[0] == DELIVERED_MANY:
                last[1].append(ref)
                if self.batch_delay > 0:
                    self._busy()  # (counted; the send that takes it is scheduled already)
                return
        self.queue_data([DELIVERED_MANY, [ref]])

    def _deliver_direct(self, op: o.DeliverDirect) -> None:
        b = self.broker
        b.deliver_direct(msg_from_wire(op.msg, b.now), op.client_id, op.qos, op.retain, op.sub_ids)
        ref = op.ref
        if ref is not None:  # (a copy from another node: its node is acknowledged once we own it)
            store = b.store
            if store is not None and store.batch is not None:
                store.after_commit(lambda ok, ref=ref: self.queue_data(o.Delivered(ref)))
            else:
                self.queue_data(o.Delivered(ref))

    def _moved(self, op: o.Moved) -> None:
        self.broker.forget_moved(op.client_id, op.filters)

    def _confirm(self, op: o.Confirm) -> None:
        self._confirms(op.ok, (op.token,))

    def _confirms(self, ok: bool, tokens) -> None:
        unconfirmed, confirms = self.unconfirmed, self.confirms
        for token in tokens:
            unconfirmed.pop(token, None)
            fn = confirms.pop(token, None)
            if fn is not None:
                fn(ok)

    def _routes(self, op: o.Routes) -> None:
        self.route_version = op.version
        sent: set = set()
        for sign, member, flt, *rest in op.delta:
            if member == self.name:
                continue
            if sign > 0:
                self._route_add(member, flt)
                since = rest[0] if rest else None
                if since is not None and self.recent and not flt.startswith("$share/"):
                    self._replay(member, flt, since, sent)
            else:
                self._route_del(member, flt)
        if self._batch_routes:
            self._routes_due = True
        else:
            self._routes_applied()

    def _routes_applied(self) -> None:
        self.queue(o.RouteAck(self.route_version))
        self.broker.routes_changed(self.route_version)

    def _synced(self, op: o.Synced) -> None:
        fn = self.syncs.pop(op.token, None)
        if fn is not None:
            fn()

    def _grant(self, op: o.Grant) -> None:
        pending = self.claims.pop(op.req, None)
        if pending is None:
            return
        b = self.broker
        conn, connect = pending
        if op.flag == Own.REFUSED:  # cluster: another connection won the id, or its owner is unreachable
            b.claim_refused(conn, connect)
            return
        if op.flag == Own.FRESH:
            b.drop_stale(connect.client_id)  # another node owned it since this copy was made
        state = session_from_wire(op.state, b.now) if op.state is not None else None
        # (FRESH with a state: taken over from another node, its routes are new here)
        b.claimed(conn, connect, state, op.flag == Own.FRESH and state is not None)

    def _takeover(self, op: o.Takeover) -> None:
        b = self.broker
        mark = len(self.out)
        if op.clean_start == STALE:
            b.drop_stale(op.client_id)
            return
        state = b.hand_over(op.client_id, op.clean_start)
        # HANDOFF goes before the ROUTE_DELs hand_over queued: the router moves the
        # routes to the new holder first, so the session's filters never vanish
        self.out.insert(mark, o.Handoff(op.client_id, op.req, None if state is None else session_to_wire(state, b.now)))
        self._schedule()

    def _retained(self, op: o.Retained) -> None:
        b = self.broker
        b.set_retained(msg_from_wire(op.msg, b.now))

    def _lease(self, op: o.Lease) -> None:
        if self.guard is not None:
            self.guard.update(op.until, op.lease)

    def _will_go(self, op: o.WillGo) -> None:
        b = self.broker
        b.publish(msg_from_wire(op.msg, b.now))

    def _adopt(self, op: o.Adopt) -> None:
        b = self.broker
        b.adopt(session_from_wire(op.state, b.now))

    def _drain_done(self, op: o.DrainDone) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(op.client_ids)

    def _pong(self, op: o.Pong) -> None:
        if self.epoch is not None and op.epoch != self.epoch:
            log.warning("router restarted: registering again", extra=kv(epoch=op.epoch))
            self.epoch = None
            self.hello()
        # (epoch None: our HELLO is on its way, or the router refused it)

    def _node_stats(self, op: o.NodeStats) -> None:
        self.node_stats = op.sums
        self.member_stats = op.members or {}

    def _welcome(self, op: o.Welcome) -> None:
        epoch, version, routes, retained = op.epoch, op.version, op.routes, op.retained
        self.epoch = epoch
        self.routes = SubscriptionTrie()
        self.remote_groups.clear()
        for member, flt in routes:
            if member != self.name:
                self._route_add(member, flt)
        b = self.broker
        for w in retained:
            b.set_retained(msg_from_wire(w, b.now))
        self.route_version = version
        b.routes_changed(version)
        log.info("registered with the router", extra=kv(epoch=epoch, routes=len(routes), retained=len(retained)))

    def _route_add(self, member: str, flt: str) -> None:
        if self.routes.add(flt, member, True) and flt.startswith("$share/"):
            key = parse_shared(flt)
            if key is not None:
                self.remote_groups[key] = self.remote_groups.get(key, 0) + 1

    def _route_del(self, member: str, flt: str) -> None:
        if self.routes.remove(flt, member) and flt.startswith("$share/"):
            key = parse_shared(flt)
            if key is not None:
                n = self.remote_groups.get(key, 0) - 1
                if n <= 0:
                    self.remote_groups.pop(key, None)
                else:
                    self.remote_groups[key] = n
