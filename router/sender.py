"""The router sends the other nodes' publishes itself (SHOAL_CLUSTER_ROUTER_SENDS, with
SHOAL_CLUSTER_LINK=direct): a message crossing nodes passes worker, router, router, worker,
and its CONFIRM router, router, worker; the agent is off the data path.

The agent keeps the control plane and tells the router what it needs (core/ops.py): every
other node it links to (PEER: its router's data address, its agent's instance, live or
left; after a new agent's registration its whole filter set, then PEERS: the list), and each
change of another node's routes (PEER_ROUTE). The router matches a publish of its members
against that table (kept in the values of the agent's entries of the router's own route
table: no second table) and queues it once per node (`Peer.queue`).

What the agent's sender guarantees (cluster/peers.py, cluster/datalink.py) holds here:
- one seq space per (this node, this router's instance, the peer): the peer's router takes
  each (node, instance, seq) once (router/forward.py RemoteSeen), so QoS 2 stays exactly
  once; what it did not confirm stays in `Peer.unacked` and is sent again after RESEND_AFTER
  (doubling to RESEND_MAX while nothing is confirmed), and, in seq order before anything
  newer, whenever a connection is made anew;
- one connection at a time, made here (ZeroMQ's reconnect off, IMMEDIATE, a monitor for the
  handshake; backoff 50 ms doubling to 2 s), ZeroMQ heartbeats from
  SHOAL_CLUSTER_LINK_DEAD_AFTER;
- a peer that left (PEER live false, or not in PEERS) counts as done for what waits for it;
- a peer whose data link had no connection for SHOAL_CLUSTER_DATA_FALLBACK_AFTER while
  messages wait (or that has no data address: its link is not `direct`, or it runs without
  this setting and an older record) has its publishes handed to the agent (PEER_PUB), which
  sends them on the agents' Link with their origin (proto Pub.origin_instance/origin_seq), so
  the receiving router still takes each once. The data link goes on trying in the background;
  once it connects, what the agent has not got confirmed is taken back and sent first, in seq
  order, then the queue (a copy the agent still delivers later is a repeat, taken once);
- at most SHOAL_CLUSTER_MAX_QUEUED per peer waiting here (queued and unconfirmed): beyond,
  QoS 0 is dropped (counted) and the router stops reading its members (push back on the
  workers, so on publishers) until every peer is under half of it;
- Message Expiry counts the wait here (a message that ran out is dropped, counted).

The agent restarting changes nothing here: the router keeps sending on what it knows, and the
new agent's PEERs replace it. Messages for a session that moved (pb.Direct), shared
subscriptions across nodes (the agent picks the node) and replays handed back for a new
remote route go through the agent as before.
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict, deque

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.logs import kv
from core import ops as o
from core import peerdata
from core.ops import unpack
from mqtt import topic_matches

from .members import AGENT

log = logging.getLogger("shoal.router")

PEER = b"\x01"  # pending-confirm idents of other nodes: PEER + node name (never a member's ident)
RESEND_AFTER = 1.0  # seconds an unconfirmed QoS 1/2 message waits before it is sent again
RESEND_MAX = 8.0  # ... doubling while the peer confirms nothing, up to this
RECONNECT_FIRST = 0.05  # seconds before a lost or refused connection is tried again ...
RECONNECT_MAX = 2.0  # ... doubling to this while the publishes wait for the data link
FALLBACK_RETRY_MAX = 30.0  # ... or to this while they go through the agent (fallen back)
TICK = 0.1  # seconds between looks at timers (resend, reconnect, fall back)
REPLAY_MARGIN = 0.05  # as router/forward.py: a QoS 0 publish read this long before a SUBSCRIBE counts
EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

_LOST = peerdata.LOST_EVENTS
_packer = msgpack.Packer(use_bin_type=True)


class Entry:
    __slots__ = ("seq", "msg", "normal", "groups", "ref", "at", "sent", "done")

    def __init__(self, seq: int, msg: list, normal: bool, groups: list, ref, at: float):
        self.seq = seq  # 0: QoS 0 (no confirm)
        self.msg = msg
        self.normal = normal
        self.groups = groups
        self.ref = ref  # (sender, token) whose confirm waits for this node, or None
        self.at = at  # when it was queued here (Message Expiry counts the wait)
        self.sent = 0.0
        self.done = False


def _seq_of(e: Entry) -> int:
    return e.seq


def aged(e: Entry, now: float) -> list | None:
    """The message with its Message Expiry less the time it waited here (None: it ran out)."""
    return peerdata.aged(e.msg, e.at, now)


class PeerLink:
    """The DEALER to one peer's router, made anew after every lost connection; its socket and
    monitor are in the router's poller."""

    def __init__(self, peer: "Peer", addr: str, now: float):
        self.peer = peer
        self.s = peer.sender
        self.addr = addr
        self.up = False
        self.ever_up = False
        self.down_since = now
        self.failures = 0
        self.last_error = ""
        self.sock = self.mon = None
        self.retry_at: float | None = None
        self.attempt_at = now
        self.closed = False
        self._connect(now)

    def _connect(self, now: float) -> None:
        self.retry_at = None
        s = self.s
        sock, mon = peerdata.dialler(peerdata.identity(s.r.settings.node, s.instance),
                                     s.r.settings.cluster_link_dead_after)
        self.sock, self.mon = sock, mon
        self.attempt_at = now
        s.register(sock)
        s.register(mon)
        try:
            sock.connect(f"tcp://{self.addr}")
        except zmq.ZMQError as e:  # (an address ZeroMQ cannot parse or resolve)
            self._lost(f"cannot connect: {e}", now)

    def events(self, now: float) -> None:
        mon = self.mon
        while mon is not None and mon is self.mon and mon.get(EVENTS) & POLLIN:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            event = ev["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up = True
                self.failures = 0
                first = not self.ever_up
                self.ever_up = True
                self.peer.link_up(self, first, now)
            elif event & _LOST:
                self._lost(peerdata.EVENT_NAMES.get(event, str(event)), now)
                return

    def read(self) -> None:
        sock = self.sock
        n = 0
        while sock is not None and sock is self.sock and sock.get(EVENTS) & POLLIN:
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            try:  # (read as wire lists, no typed op each; only ok ones: core/peerdata.confirmed_seqs)
                seqs = peerdata.confirmed_seqs(unpack(data))
            except Exception:
                log.warning("undecodable answer on the data link", extra=kv(peer=self.peer.node, size=len(data)))
                continue
            self.peer.confirmed(seqs)
            n += 1
            if n >= 1000:
                break

    def send(self, data: bytes) -> bool:
        """False: no connection, or the socket's queue is full: try again later."""
        if not self.up:
            return False
        try:
            self.sock.send(data, NOBLOCK)
        except zmq.Again:
            return False
        return True

    def check(self, now: float) -> None:
        if self.closed:
            return
        if self.retry_at is not None:
            if now >= self.retry_at:
                self._connect(now)
        elif not self.up and self.sock is not None:
            dead_after = self.s.r.settings.cluster_link_dead_after
            if now - self.attempt_at > dead_after * 4 / 3 + 1:
                self._lost("no connection in time", now)

    def _lost(self, why: str, now: float) -> None:
        was_up = self.up
        self.up = False
        self.last_error = why
        self._drop_socket()
        if was_up:
            self.down_since = now
        self.failures += 1
        fallen = self.peer.fallen_back
        delay = min(RECONNECT_FIRST * 2 ** min(self.failures - 1, 20), FALLBACK_RETRY_MAX if fallen else RECONNECT_MAX)
        if fallen:
            delay = max(delay, 1.0)
        if not self.closed:
            self.retry_at = now + delay
            if was_up:
                log.warning("data link to the peer's router lost: connecting again", extra=kv(
                    peer=self.peer.node, addr=self.addr, error=why, waiting=self.peer.size()))

    def _drop_socket(self) -> None:
        sock, mon = self.sock, self.mon
        self.sock = self.mon = None
        for x in (sock, mon):
            if x is not None:
                self.s.unregister(x)
        if sock is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            sock.close(0)
        if mon is not None:
            mon.close(0)

    def close(self) -> None:
        self.closed = True
        self.up = False
        self.retry_at = None
        self._drop_socket()


class Peer:
    """Another node: its data address, what waits for it, and by which path it goes."""

    def __init__(self, sender: "Sender", node: str):
        self.sender = sender
        self.node = node
        self.ident = PEER + node.encode()
        self.instance = ""  # its agent's instance (logs)
        self.data_addr: str | None = None
        self.link: PeerLink | None = None
        self.fallen_back = False  # the data link had no connection: the publishes go through the agent
        self.agent_knows = False  # the current agent announced it (it can take PEER_PUBs for it)
        # seqs go on from this router's last life of a link to that node: its router (the same
        # process, when that node was cut off and came back) still knows the seqs it took from
        # this instance and drops them as repeats (the agent's peer_seqs, cluster/peers.py)
        self.seq = sender.seqs.setdefault(node, itertools.count(1))
        self.queue: deque[Entry] = deque()
        self.unacked: OrderedDict[int, Entry] = OrderedDict()  # sent on the data link, not confirmed
        self.handed: dict[int, Entry] = {}  # token -> handed to the agent, not confirmed
        self.resend_after = RESEND_AFTER
        self.fallbacks = 0

    def size(self) -> int:
        return len(self.queue) + len(self.unacked)

    @property
    def direct(self) -> bool:
        return self.data_addr is not None and not self.fallen_back

    def set_addr(self, addr: str | None, now: float) -> None:
        if addr == self.data_addr:
            return
        old = self.link
        self.data_addr = addr
        if old is not None:
            old.close()
            self.link = None
        self._requeue()  # (what the old link did not get confirmed: first on the next carrier)
        if addr:
            self.link = PeerLink(self, addr, now)
        else:
            self.fallen_back = False  # (no data address: the agent's path, not a fall back)
        self.sender.dirty.add(self)

    def _requeue(self, take_back: bool = False) -> None:
        """Unconfirmed entries (and, take_back, those the agent has) to the front, in seq order."""
        again = list(self.unacked.values())
        self.unacked.clear()
        if take_back and self.handed:
            again += self.handed.values()
            self.handed.clear()
        if again:
            again.sort(key=_seq_of)
            self.queue.extendleft(reversed(again))

    def link_up(self, link: PeerLink, first: bool, now: float) -> None:
        if link is not self.link:
            return
        if self.fallen_back:
            self.fallen_back = False
            log.warning("peer router's data address reachable again: its publishes go on the direct data link",
                        extra=kv(peer=self.node, addr=link.addr, taken_back=len(self.handed)))
        else:
            log.info("direct data link to the peer's router" if first else "data link to the peer's router up again",
                     extra=kv(peer=self.node, addr=link.addr, resent=len(self.unacked) + len(self.handed)))
        self.resend_after = RESEND_AFTER
        self._requeue(take_back=True)
        self.sender.dirty.add(self)

    def check(self, now: float) -> None:
        link = self.link
        if link is None:
            return
        link.check(now)
        if not self.fallen_back and not link.up:
            s = self.sender
            if (self.queue or self.unacked) and now - link.down_since >= s.r.settings.cluster_data_fallback_after \
                    and s.agent_ready(self):
                self.fallen_back = True
                self.fallbacks += 1
                s.fallbacks += 1
                self._requeue()
                s.dirty.add(self)
                log.warning("peer router's data address unreachable: its publishes go over the Link", extra=kv(
                    peer=self.node, addr=link.addr, waited_s=round(now - link.down_since, 1), error=link.last_error,
                    waiting=len(self.queue), fallbacks=self.fallbacks,
                    fix=f"let this host reach {link.addr} (a firewall?), or set SHOAL_CLUSTER_DATA_ADDR on "
                        f"{self.node} to an address every node reaches"))
        elif link.up and self.unacked:
            self._resend_due(now)

    def _resend_due(self, now: float) -> None:
        limit = now - self.resend_after
        due = [e for e in self.unacked.values() if e.sent <= limit]
        if not due:
            return
        self.sender.resent += len(due)
        log.warning("peer router did not confirm: sending again", extra=kv(
            peer=self.node, addr=self.data_addr, resent=len(due), waited_s=self.resend_after))
        self._send(deque(due), now, False)
        self.resend_after = min(self.resend_after * 2, RESEND_MAX)

    def flush(self, now: float) -> bool:
        """Send or hand over what is queued; False when some is left (the socket was full)."""
        if not self.queue:
            return True
        s = self.sender
        if self.direct:
            if self.link is not None and self.link.up:
                return self._send(self.queue, now, True)
            return True  # (waits for the connection, or the fall back)
        if s.agent_ready(self):
            self._hand(now)
        return True

    def _send(self, entries: deque, now: float, from_queue: bool) -> bool:
        st = self.sender.r.settings
        most, most_bytes = st.cluster_batch, st.cluster_frame_bytes
        link = self.link
        s = self.sender
        while entries:
            ops, sent, size = [], [], 0
            while entries and len(ops) < most and (not ops or size < most_bytes):
                e = entries.popleft()
                m = aged(e, now)
                if m is None:  # its Message Expiry ran out while it waited here
                    s.expired += 1
                    self.unacked.pop(e.seq, None)
                    s.resolve(self, e)
                    continue
                body = _packer.pack(m)
                size += len(body)
                ops.append(peerdata.remote_pub(body, e.normal, e.groups, e.seq))
                sent.append(e)
            if not ops:
                continue
            if not link.send(peerdata.batch(ops)):
                if from_queue:
                    entries.extendleft(reversed(sent))
                    return False
                return True  # (a resend: the entries stay in unacked, tried at the next check)
            s.sent += len(sent)
            unacked = self.unacked
            for e in sent:
                if e.seq:
                    e.sent = now
                    unacked[e.seq] = e
        return True

    def _hand(self, now: float) -> None:
        """The queue to the agent (PEER_PUB), each with its origin; QoS 0 is forgotten here."""
        s = self.sender
        r = s.r
        inst = s.instance
        while self.queue:
            e = self.queue.popleft()
            m = aged(e, now)
            if m is None:
                s.expired += 1
                s.resolve(self, e)
                continue
            if e.seq:
                token = next(s.tokens)
                self.handed[token] = e
                s.handed_by_token[token] = self
                r.send(AGENT, o.PeerPub(self.node, m, e.normal, e.groups, token, [inst, e.seq]))
            else:
                r.send(AGENT, o.PeerPub(self.node, m, e.normal, e.groups, None, None))
            s.handed += 1

    def confirmed(self, seqs: list) -> None:
        got = False
        for seq in seqs:
            e = self.unacked.pop(seq, None)
            if e is not None:
                got = True
                self.sender.resolve(self, e)
        if got:
            self.resend_after = RESEND_AFTER
            self.sender.check_pressure()

    def close(self) -> list:
        """It left: every entry, for its refs to count as done."""
        if self.link is not None:
            self.link.close()
            self.link = None
        out = list(self.queue) + list(self.unacked.values()) + list(self.handed.values())
        self.queue.clear()
        self.unacked.clear()
        for t in self.handed:
            self.sender.handed_by_token.pop(t, None)
        self.handed.clear()
        return out


class Sender:
    def __init__(self, router):
        self.r = router
        # this router's seq space (the peers' RemoteSeen); its end says this router reads CONFIRMS
        self.instance = "r" + os.urandom(8).hex() + peerdata.CONFIRMS_MARK
        self.peers: dict[str, Peer] = {}
        self.names: dict[str, str] = {}  # node name -> its one str (the values of the route table)
        self.seqs: dict[str, itertools.count] = {}  # node -> this instance's seqs to it (kept when it leaves)
        self.dirty: set[Peer] = set()  # peers with something to send
        self.poller: zmq.Poller | None = None
        self.socks: dict = {}  # registered socket -> its PeerLink
        self.tokens = itertools.count(1)
        self.handed_by_token: dict[int, Peer] = {}
        self.paused = False
        self.next_tick = 0.0
        self.max_queued = router.settings.cluster_max_queued
        self.sent = 0
        self.resent = 0
        self.handed = 0
        self.dropped_qos0 = 0
        self.refused = 0  # QoS 1/2 publishes refused: a full queue only the agent could move (stuck)
        self.expired = 0
        self.fallbacks = 0
        log.info("the router sends the other nodes' publishes itself (SHOAL_CLUSTER_ROUTER_SENDS)",
                 extra=kv(instance=self.instance))

    # -- the poller --------------------------------------------------------------------
    def attach(self, poller: zmq.Poller) -> None:
        self.poller = poller
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)

    def register(self, sock) -> None:
        self.socks[sock] = None
        if self.poller is not None:
            self.poller.register(sock, zmq.POLLIN)

    def unregister(self, sock) -> None:
        self.socks.pop(sock, None)
        if self.poller is not None:
            try:
                self.poller.unregister(sock)
            except KeyError:
                pass

    def poll(self, events: dict, now: float) -> None:
        """The data links' sockets that poll found readable."""
        if not events:
            return
        for p in list(self.peers.values()):
            link = p.link
            if link is None:
                continue
            if link.mon is not None and link.mon in events:
                link.events(now)
            if link.sock is not None and link.sock in events:
                link.read()

    def tick(self, now: float) -> None:
        if now < self.next_tick:
            return
        self.next_tick = now + TICK
        for p in list(self.peers.values()):
            p.check(now)
        self.check_pressure()

    def timeout_ms(self) -> int:
        return 5 if self.dirty else int(TICK * 1000)

    def flush(self, now: float) -> None:
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        for p in dirty:
            if p.node in self.peers and not p.flush(now):
                self.dirty.add(p)  # (its socket was full: again at the next pass)

    # -- the agent's ops ---------------------------------------------------------------------
    def agent_ready(self, p: Peer) -> bool:
        return p.agent_knows and self.r.membership.alive(AGENT) is not None

    def on_op(self, op, now: float) -> None:
        cls = op.__class__
        if cls is o.PeerRoute:
            self._route(op, now)
        elif cls is o.PeerInfo:
            self._info(op, now)
        elif cls is o.Peers:
            keep = set(op.nodes)
            for node in [n for n in self.peers if n not in keep]:
                self._drop(node)

    # The other nodes' routes live in the router's own route table: the value of the agent's
    # entry for a filter (routes.py stores True there) is the node holding it, or a tuple of
    # the nodes (a node name is one str for the whole table: no object per route). True: not
    # known (yet), the publish goes through the agent as without this setting.
    def _set(self, flt: str, node: str, add: bool) -> bool:
        """node holds flt now (add) or not; False when the agent has no entry for flt."""
        trie = self.r.routes.trie
        cur = trie.get(flt, AGENT)
        if cur is None:
            return False
        node = self.names.setdefault(node, node)  # (one str per node: each op decodes a new one)
        nodes = () if cur is True else (cur,) if type(cur) is str else cur
        if add:
            if node in nodes:
                return True
            nodes = nodes + (node,)
        else:
            if node not in nodes:
                return True
            nodes = tuple(n for n in nodes if n != node)
        trie.add(flt, AGENT, nodes[0] if len(nodes) == 1 else nodes)
        return True

    def _route(self, op: o.PeerRoute, now: float) -> None:
        if op.filter.startswith("$share/"):
            return
        if self._set(op.filter, op.node, op.add) and op.add and op.since is not None and op.node in self.peers:
            self._replay(op.node, op.filter, op.since, now)

    def _forget_routes(self, node: str, keep: set | None = None) -> None:
        """node's routes out of the table, but for the filters in keep (a walk of the table)."""
        trie = self.r.routes.trie
        for flt, key in [x for x in trie.pairs() if x[1] == AGENT]:
            if keep is not None and flt in keep:
                continue
            v = trie.get(flt, AGENT)
            if v == node or (type(v) is tuple and node in v):
                self._set(flt, node, False)

    def _info(self, op: o.PeerInfo, now: float) -> None:
        if not op.live:
            self._drop(op.node)
            return
        p = self.peers.get(op.node)
        if p is None:
            p = self.peers[op.node] = Peer(self, op.node)
            log.info("peer node known to the router", extra=kv(peer=op.node, data_addr=op.data_addr))
        p.instance = op.instance
        p.agent_knows = True
        p.set_addr(op.data_addr or None, now)
        if op.filters is not None:
            keep = set(op.filters)
            self._forget_routes(op.node, keep)
            for flt in keep:
                if not flt.startswith("$share/"):
                    self._set(flt, op.node, True)
        self.dirty.add(p)

    def _drop(self, node: str) -> None:
        """The node left: what waits for it counts as done (nothing there will own it)."""
        p = self.peers.pop(node, None)
        if p is None:
            return
        left = p.close()
        for e in left:
            self.resolve(p, e)
        self.dirty.discard(p)
        self._forget_routes(node)
        log.info("peer node left: the router's queue for it counts as done", extra=kv(peer=node, entries=len(left)))
        self.check_pressure()

    def agent_gone(self) -> None:
        """The agent died (or registered anew): what it had not got confirmed comes back here, in
        seq order, and waits for the next agent's PEERs (or goes on the data link)."""
        for p in self.peers.values():
            p.agent_knows = False
            if p.handed:
                for t in p.handed:
                    self.handed_by_token.pop(t, None)
                again = sorted(p.handed.values(), key=_seq_of)
                p.handed.clear()
                p.queue.extendleft(reversed(again))
                self.dirty.add(p)

    def handed_done(self, token) -> None:
        """The agent's DELIVERED [HANDED, token]: that node owns it (or left)."""
        p = self.handed_by_token.pop(token, None)
        if p is None:
            return
        e = p.handed.pop(token, None)
        if e is not None:
            self.resolve(p, e)

    # -- publishes ------------------------------------------------------------------------
    def nodes_of(self, values: list) -> list | None:
        """The known nodes named by the values of the agent's entries a topic matched, each once;
        None: some entry's nodes are not known (True): that publish goes through the agent."""
        peers = self.peers
        out = []
        for v in values:
            if v is True:
                return None
            for node in (v,) if type(v) is str else v:
                if node in peers and node not in out:
                    out.append(node)
        return out

    def blocked(self) -> bool:
        """The router does not read its members: a peer's queue is full (push back), unless
        only the agent's news can unblock it (the agent restarted: its PEERs must be read)."""
        return self.paused and not self.stuck()

    def stuck(self) -> bool:
        """A full peer's queue can only move once the agent is read: no data link up, and no
        agent that knows it (it died, or registered anew and has not said PEER yet)."""
        if self.r.membership.alive(AGENT) is None:
            return True
        m = self.max_queued
        return any(p.size() >= m and not p.agent_knows and not (p.link is not None and p.link.up)
                   for p in self.peers.values())

    def enqueue(self, nodes: list, msg: list, key, now: float) -> list | None:
        """msg to each node (a publish of this node's members); the idents of the nodes it
        was queued for (PEER + node): a QoS 1/2 publish's pending confirm waits for them. None:
        a QoS 1/2 publish refused (a peer's queue is full and stuck: `stuck`), as a publish for
        other nodes is while the agent restarts without this setting."""
        qos = msg[2]
        out = []
        if qos and self.paused:
            mx = self.max_queued
            if any(self.peers[nd].size() >= mx for nd in nodes) and self.stuck():
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("peer queue full while the agent is away: QoS 1/2 publish refused", extra=kv(
                        topic=msg[0][:100], refused=self.refused))
                return None
        for node in nodes:
            p = self.peers[node]
            if qos == 0 and p.size() >= self.max_queued:
                self.dropped_qos0 += 1
                if self.dropped_qos0 == 1 or self.dropped_qos0 % 1000 == 0:
                    log.warning("peer queue full: QoS 0 message dropped", extra=kv(
                        peer=node, topic=msg[0][:100], dropped=self.dropped_qos0))
                continue
            p.queue.append(Entry(next(p.seq) if qos else 0, msg, True, [], key if qos else None, now))
            self.dirty.add(p)
            out.append(p.ident)
            if p.size() >= self.max_queued and qos and not self.paused:
                self.paused = True
                log.warning("peer queue full: not reading from the members", extra=kv(peer=node, queued=p.size()))
        return out

    def resolve(self, p: Peer, e: Entry) -> None:
        if e.done:
            return
        e.done = True
        if e.ref is not None:
            self.r.forward.peer_done(e.ref, p.ident)

    def check_pressure(self) -> None:
        if self.paused and all(p.size() < self.max_queued // 2 for p in self.peers.values()):
            self.paused = False
            log.warning("peer queues drained: reading from the members again")

    def _replay(self, node: str, flt: str, since: float, now: float) -> None:
        """Another node's new route: what this router sent to other nodes since that node's
        SUBSCRIBE goes to it too (as the agent does, cluster/replay.py; a QoS 1/2 publish read
        before the SUBSCRIBE is never replayed)."""
        ident = PEER + node.encode()
        early = since - REPLAY_MARGIN
        p = self.peers[node]
        for at, _sender, msg, targets in reversed(self.r.forward.recent):
            if at < early:
                break
            if at < since and msg[2]:
                continue
            if ident in targets or not any(t[:1] == PEER for t in targets) or not topic_matches(flt, msg[0]):
                continue
            targets.add(ident)
            p.queue.append(Entry(next(p.seq) if msg[2] else 0, msg, True, [], None, now))
            self.dirty.add(p)

    def figures(self) -> dict:
        return {
            "sender_sent": self.sent,
            "sender_resent": self.resent,
            "sender_handed": self.handed,
            "sender_queued": sum(p.size() for p in self.peers.values()),
            "sender_dropped_qos0": self.dropped_qos0,
            "sender_refused": self.refused,
            "sender_expired": self.expired,
            "sender_fallbacks": self.fallbacks,
            "sender_paused": int(self.paused),
        }

    def close(self) -> None:
        for p in self.peers.values():
            if p.link is not None:
                p.link.close()
